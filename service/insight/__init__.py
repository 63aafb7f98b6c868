"""What the network has learned, layer by layer (the ``/insight`` endpoints).

- ``architecture``: receptive fields and filters, read from the twin's ``torch.export`` graph;
- ``grid``: filters, activation maps and patches drawn as tiles of one grid image;
- ``maximize``: images synthesised by gradient ascent to excite a class or a channel;
- ``patches``: the stored top patches of a bundle (written by ``python -m training insight``);
- ``inspector``: all of it for one served model, computed on first use and kept.
"""
