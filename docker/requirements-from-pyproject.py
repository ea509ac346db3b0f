"""Print the [project].dependencies of pyproject.toml, one per line, and those of the extras named
after it (comma-separated, e.g. `ray` for `pmerge serve --ray`).

Used by the Dockerfile to install the (large, slow-changing) dependencies in
their own cached layer, before the project's code is copied in.
"""
import sys
import tomllib

path = sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"
extras = [e for e in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if e]
with open(path, "rb") as f:
    project = tomllib.load(f)["project"]
unknown = sorted(set(extras) - set(project.get("optional-dependencies", {})))
if unknown:
    sys.exit(f"unknown extras {unknown}; pyproject.toml has {sorted(project.get('optional-dependencies', {}))}")
deps = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
print("\n".join(deps))
