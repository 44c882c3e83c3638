"""Options shared by several commands; their defaults and help come from the configuration (services/compose.py)."""

import argparse
import dataclasses

from services.compose import StorageConfig, storage_of


def default_of(config_class, name: str):
    return {f.name: f for f in dataclasses.fields(config_class)}[name].default


def help_of(config_class, name: str) -> str:
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    default = field.default
    suffix = f" (default {default})" if default not in (None, False) else ""
    return field.metadata.get("help", "") + suffix


def add_setting(parser: argparse.ArgumentParser, flag: str, config_class, name: str, **kwargs) -> None:
    """An option whose default and help text are the configuration field's own."""
    if "action" not in kwargs:
        kwargs.setdefault("default", default_of(config_class, name))
    parser.add_argument(flag, dest=name, help=help_of(config_class, name), **kwargs)


def add_storage_options(parser: argparse.ArgumentParser):
    """--data-dir | --database; returns the group so that a command may add another exclusive source."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data-dir", default=default_of(StorageConfig, "data_dir"), metavar="DIR",
                       help=help_of(StorageConfig, "data_dir"))
    group.add_argument("--database", metavar="URL", help=help_of(StorageConfig, "database_url"))
    parser.add_argument("--database-password-file", metavar="FILE",
                        help=help_of(StorageConfig, "database_password_file"))
    return group


def storage_from(args) -> StorageConfig:
    return storage_of(args.data_dir, args.database, getattr(args, "database_password_file", None))


def position(text: str) -> int:
    """A log position: 0-based, never negative."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; positions count from 0")
    return value


def positive_number(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, ArithmeticError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value
    parse.__name__ = kind.__name__
    return parse

