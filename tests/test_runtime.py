"""The command line's allocator settings (vpt_jax/runtime.py): when they apply, and what they do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vpt_jax import runtime

glibc_linux = pytest.mark.skipif(
    runtime.allocator_environment({}) is None, reason="needs Linux with glibc"
)


@glibc_linux
def test_tunables_are_added_to_the_users_other_tunables():
    env = runtime.allocator_environment({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"})
    assert env["GLIBC_TUNABLES"].split(":") == [
        "glibc.cpu.hwcaps=-AVX2",
        *runtime.ALLOCATOR_TUNABLES,
    ]


@pytest.mark.parametrize(
    "environ",
    [
        {"VPT_JAX_ALLOCATOR": "system"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},  # the user's own malloc settings win
        {"GLIBC_TUNABLES": ":".join(runtime.ALLOCATOR_TUNABLES)},  # already set
        {"_VPT_JAX_ALLOCATOR_REEXEC": "1"},  # never loops
    ],
)
def test_the_environment_is_left_alone(environ):
    assert runtime.allocator_environment(environ) is None


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout


@glibc_linux
def test_the_process_reexecutes_itself_once_with_the_same_pid():
    out = _run(
        """
        import os
        print("start", os.getpid(), flush=True)
        from vpt_jax.runtime import allocator_description, use_fast_allocator
        use_fast_allocator()
        print("after", os.getpid(), allocator_description())
        """
    ).split("\n")
    starts = [line for line in out if line.startswith("start")]
    assert len(starts) == 2 and starts[0] == starts[1]  # exec keeps the PID
    assert out[2] == f"after {starts[0].split()[1]} glibc, vpt_jax tunables"


FAULTS = """
    import resource
    import jax, jax.numpy as jnp
    from vpt_jax.runtime import use_fast_allocator, allocator_description
    use_fast_allocator()
    # Temporaries of ~16 MB each, allocated and freed by every call, as in a training step.
    f = jax.jit(lambda x: (jnp.tanh(x @ x.T) @ jnp.sin(x @ x.T)).sum(0))
    x = jnp.ones((2048, 256))
    windows = []
    for _ in range(6):  # the fewest faults per call over windows of 3 calls: the first window
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # grows the heap, and on a
        for _ in range(3):  # loaded machine the order of parallel work can grow it again later
            f(x).block_until_ready()
        windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
    print(min(windows))
"""


@glibc_linux
def test_the_tunables_stop_xla_temporaries_from_page_faulting_every_step():
    with_tunables = int(_run(FAULTS))
    system = int(_run(FAULTS, VPT_JAX_ALLOCATOR="system"))
    # Each 16 MB buffer is 4k pages; glibc's defaults fault them in again at every call.
    assert system > 4_000
    assert with_tunables < system / 10, (with_tunables, system)
