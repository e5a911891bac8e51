"""The runner's idle hook hands freed heap back: glibc's malloc_trim where there is one."""

from lmdeploy.adapters.engines.pytorch.runner import host_memory


def test_release_freed_heap_calls_malloc_trim_with_no_padding(monkeypatch):
    calls = []
    host_memory._malloc_trim.cache_clear()
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: calls.append)
    host_memory.release_freed_heap()
    assert calls == [0]


def test_release_freed_heap_is_a_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    host_memory.release_freed_heap()  # must not raise


def test_this_libc_has_malloc_trim_and_it_runs():
    host_memory._malloc_trim.cache_clear()
    trim = host_memory._malloc_trim()
    assert trim is not None  # glibc, as on every machine CI runs on
    host_memory.release_freed_heap()
