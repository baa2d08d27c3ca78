"""Adapters that let other libraries' models run on our kernels (``huggingface``)."""
