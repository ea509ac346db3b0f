"""`python -m service --store STORE [...]`: the same as `pmerge serve`."""
import argparse

from service.cli import add_serve_arguments, serve


def main() -> None:
    parser = add_serve_arguments(argparse.ArgumentParser(prog="python -m service", description="serve a family"))
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
