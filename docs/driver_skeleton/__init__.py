"""A driver template: copy this folder to ``hardware/bms/<name>/`` and replace the example protocol with yours.

See README.md here and README.md at the repository root, "Adding a driver".
"""
