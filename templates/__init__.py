"""Jinja2 templates (savepnpc .res, nsradmin input, backup-groups.conf) and ``imsconfig``,
which renders them.  Templates are package data, loaded from the installed package, so they
work from a wheel as well as from a checkout."""
