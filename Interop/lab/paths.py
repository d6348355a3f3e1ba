"""Where things live."""
import os

INTEROP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(INTEROP)
VM_DIR = os.path.join(INTEROP, "vm")
CONFIG_DIR = os.path.join(REPO, "Config")


def cache_dir():
    """Kernels, indices and images: outside the repo, shared by every checkout."""
    return os.environ.get("DLM_LAB_CACHE", "/var/cache/dlm-peer-lab")


def results_dir():
    return os.environ.get("DLM_LAB_RESULTS", os.path.join(INTEROP, "results"))
