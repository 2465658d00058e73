"""The learned mask networks of the seed (PyTorch): a shared image encoder, a propagation decoder shared by mask and
scribble propagation, an interactive decoder, and a scribble embedding head.

Importing this package needs torch (`pip install -e '.[learned]'`); nothing else in ScribbleBox does.
"""
