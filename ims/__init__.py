"""ims: back up and restore a Dovecot Maildir message store the way Sun's imsbackup did.

Packages: ``ims.store`` (store drivers), ``ims.archive`` (the archive format), ``ims.cli``
(command-line shims).  Modules: ``config``, ``names``, ``backup``, ``samplestore``.
"""

__version__ = "0.1.0"
