"""The huge-page tunable the training command re-executes itself with (emocap_jax/host_memory.py)."""
import os
import subprocess
import sys

import pytest

from emocap_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tunable_is_added_to_an_empty_or_existing_setting():
    env = host_memory.environment_with_huge_pages({"PATH": "/bin"}, supported=True)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = host_memory.environment_with_huge_pages(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, supported=True)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("env,supported", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, True),   # the user's own choice is kept
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, True),   # already re-executed: no loop
    ({"EMOCAP_NO_HUGE_PAGES": "1"}, True),                  # switched off
    ({}, False),                                            # kernel or libc cannot do it
])
def test_nothing_to_do_leaves_the_process_alone(env, supported):
    assert host_memory.environment_with_huge_pages(env, supported=supported) is None


def test_support_follows_the_kernels_transparent_huge_page_mode(tmp_path):
    if not host_memory.huge_pages_supported():
        pytest.skip("this machine's glibc or kernel has no huge pages on request")
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    assert host_memory.huge_pages_supported(str(mode))
    for other in ("[always] madvise never\n", "always madvise [never]\n"):
        mode.write_text(other)
        assert not host_memory.huge_pages_supported(str(mode))
    assert not host_memory.huge_pages_supported(str(tmp_path / "missing"))


@pytest.mark.parametrize("disabled", [False, True])
def test_reexec_keeps_the_command_line_and_sets_the_tunable(disabled):
    code = ("import os, sys; from emocap_jax import host_memory; "
            "host_memory.reexec_with_huge_pages(); "
            "print(os.getpid(), sys.argv[1:], os.environ.get('GLIBC_TUNABLES'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                            "EMOCAP_NO_HUGE_PAGES")}
    if disabled:
        env["EMOCAP_NO_HUGE_PAGES"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", code, "a", "--b=1"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    out = proc.communicate(timeout=120)[0].split()
    assert proc.returncode == 0
    assert out[0] == str(proc.pid)                     # replaced in place, not a child process
    assert " ".join(out[1:3]) == "['a', '--b=1']"
    expected = ("glibc.malloc.hugetlb=1" if host_memory.huge_pages_supported() and not disabled
                else "None")
    assert out[3] == expected
