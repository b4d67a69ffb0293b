"""How people start the farm: the ``renderfarm`` command, the embedded farm and the demo.

The only package that imports both ``api`` and ``workers``.
"""
