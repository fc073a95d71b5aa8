"""The allocator setting fit applies: freed step-sized blocks are reused without page faults."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# in a fresh interpreter: mallopt is process-wide, and other tests call fit in this one
CHILD = """
import json, resource, torch
from recoder_dist.allocator import reuse_freed_memory

def faults():  # minor page faults of a 32 MB float32 buffer (about B x |T| logits at ML-20M size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(8 << 20, dtype=torch.float32)
    buffer.fill_(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = [faults() for _ in range(10)]
applied = reuse_freed_memory()
# the first rounds grow the heap until a freed block fits the next (aligned) request
steady = [faults() for _ in range(20)][-5:]
print(json.dumps({"default": default, "applied": applied, "steady": steady,
                  "pages": (32 << 20) // resource.getpagesize()}))
"""


def counts_4k_page_faults() -> bool:
    """glibc, and no transparent huge pages on every mapping (which would touch 32 MB in ~16 faults)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return platform.libc_ver()[0] == "glibc" and not (thp.is_file() and "[always]" in thp.read_text())


@pytest.mark.skipif(not counts_4k_page_faults(), reason="needs glibc's malloc and 4 KiB pages to count faults")
def test_a_freed_step_buffer_is_reused_without_page_faults():
    # glibc's malloc as configured by default (no preloaded allocator, no MALLOC_* tunables)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    pages = result["pages"]
    assert min(result["default"]) > pages // 2, result  # glibc's default: mapped afresh every time
    assert result["applied"]
    assert max(result["steady"]) < pages // 20, result
