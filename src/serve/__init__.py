"""Documented import path `lmdeploy.serve` (for `lmdeploy.serve.openai.api_client`).

`lmdeploy.serve(...)` is also the documented function that starts a server. Importing this
sub-package rebinds the attribute `lmdeploy.serve` to the package, so the package itself is
made callable and forwards to that function: both documented uses keep working.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..infrastructure.launcher import serve

        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
