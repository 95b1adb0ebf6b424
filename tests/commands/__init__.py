"""Tests of the medssl subcommands, one file per medssl/commands/ module."""
