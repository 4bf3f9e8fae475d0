"""The small argparse layer shared by every script: each module-level global
(e.g. GEN_IDX, EPOCHS) becomes a flag (--gen-idx, --epochs) whose default is
the global's current value, so editing the global and passing the flag agree.
"""
import argparse
import sys


class UserError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see --help)")


def flag_name(global_name: str) -> str:
    return "--" + global_name.lower().replace("_", "-")


def override_globals(namespace: dict, names, description: str, argv=None, positive=(), choices=None,
                     help_text=None, positional=(), optional_bools=()):
    """Parse argv into the globals `names` of `namespace` (a module's globals()).

    Names in `positional` may also be given as an optional positional argument.

    A global's type follows its default: bool -> --x/--no-x, list/tuple -> one
    or more values of the first element's type, None -> string (or none); a
    name in `optional_bools` (default None: unset) -> --x/--no-x.
    `positive` names must be > 0; `choices` maps a name to its allowed values.
    """
    choices = choices or {}
    help_text = help_text or {}
    parser = _OneLineParser(description=description,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name in names:
        default = namespace[name]
        kwargs = {"default": default, "dest": name, "help": help_text.get(name, name)}
        if isinstance(default, bool) or name in optional_bools:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (list, tuple)):
            kwargs.update(nargs="+", type=type(default[0]) if default else str)
        elif default is None:
            kwargs["type"] = _none_or_str
        else:
            kwargs["type"] = type(default)
        if name in choices:
            kwargs["choices"] = choices[name]
        parser.add_argument(flag_name(name), **kwargs)
    for name in positional:
        parser.add_argument(f"{name.lower()}_positional", nargs="?", metavar=name.lower(),
                            help=f"same as {flag_name(name)}")
    args = parser.parse_args(argv)
    for name in names:
        value = getattr(args, name)
        if name in positional and getattr(args, f"{name.lower()}_positional") is not None:
            value = getattr(args, f"{name.lower()}_positional")
        if isinstance(namespace[name], tuple) and isinstance(value, list):
            value = tuple(value)
        if name in positive and not _all_positive(value):
            raise UserError(f"{flag_name(name)} must be positive, got {value}")
        namespace[name] = value
    return args


def _none_or_str(text):
    return None if text.lower() == "none" else text


def _all_positive(value):
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(v > 0 for v in values)


def run_main(main, keep_freed_memory=True):
    """Call `main()`, turning a UserError into a one-line message on stderr and exit status 2; first let
    malloc keep freed tensor memory (models.fast_paths.keep_freed_memory) unless asked not to."""
    if keep_freed_memory:
        from models.fast_paths import keep_freed_memory as keep
        keep()
    try:
        main()
    except UserError as error:
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        sys.exit(2)
