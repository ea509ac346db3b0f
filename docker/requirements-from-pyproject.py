"""Print the [project].dependencies of pyproject.toml, one per line.

Used by the Dockerfile to install the (large, slow-changing) dependencies in
their own cached layer, before the project's code is copied in.
"""
import sys
import tomllib

path = sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"
with open(path, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(deps))
