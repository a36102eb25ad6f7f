"""See icrm_kernels/__init__.py for the public API."""
