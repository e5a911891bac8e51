"""Imported at start-up by every process of `gpu_tp_profile.py` (it puts this directory on
PYTHONPATH): with TP_PROFILE_DIR set, each tensor-parallel rank runs torch.profiler over the
same window of model calls, counted by the step channel's headers of op TP_PROFILE_OP (REPLAY,
the decode graphs, by default; FORWARD on a CPU) as rank 0 sends them and the others receive
them, and writes TP_PROFILE_DIR/rank<r>.json. Nothing here changes what the engine computes."""

import os
import sys

if os.environ.get("TP_PROFILE_DIR"):
    import builtins

    _import = builtins.__import__
    _MODULE = "lmdeploy.adapters.engines.pytorch.distributed.step_channel"
    _patched = [False]

    def _install(sc):
        import torch
        import torch.distributed as dist

        first = int(os.environ.get("TP_PROFILE_FROM", "60"))
        count = int(os.environ.get("TP_PROFILE_STEPS", "20"))
        state = {"replays": 0, "prof": None}

        def tick():
            state["replays"] += 1
            n = state["replays"]
            if n == first:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                state["prof"] = torch.profiler.profile(activities=activities)
                state["prof"].__enter__()
            elif n == first + count and state["prof"] is not None:
                prof, state["prof"] = state["prof"], None
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                prof.__exit__(None, None, None)
                path = os.path.join(os.environ["TP_PROFILE_DIR"], f"rank{dist.get_rank()}.json")
                prof.export_chrome_trace(path)
                print(f"rank {dist.get_rank()}: profile written to {path}", file=sys.stderr)

        op = int(sc.Op[os.environ.get("TP_PROFILE_OP", "REPLAY")])
        send_header, recv_header = sc.StepChannel.send_header, sc.StepChannel.recv_header

        def send_counted(self, header_op, *fields):
            if int(header_op) == op:
                tick()
            return send_header(self, header_op, *fields)

        def recv_counted(self):
            header = recv_header(self)
            if header[0] == op:
                tick()
            return header

        sc.StepChannel.send_header, sc.StepChannel.recv_header = send_counted, recv_counted

    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        if not _patched[0]:
            sc = sys.modules.get(_MODULE)
            if sc is not None and hasattr(sc, "serve"):
                _patched[0] = True
                _install(sc)
        return module

    builtins.__import__ = _hook
