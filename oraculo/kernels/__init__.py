"""The user's sandbox kernel: the ``oraculo`` kernelspec, its limits and its IPython extension."""
