"""dlm-peer interop lab: real kernel DLM nodes in QEMU VMs (see Interop/README.md)."""
