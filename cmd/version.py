"""MAMS' version.

`mams` is a namespace package (cmd/ has no __init__.py) on purpose: from a checkout's root,
where cmd/ is on sys.path, `import cmd` then still finds the standard library's module
(pdb needs it), because a regular module anywhere on the path wins over a folder without
an __init__.py.
"""

__version__ = "0.1.0"
