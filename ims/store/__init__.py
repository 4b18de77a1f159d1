"""Store drivers: how a message store is read (and later written).

``base`` defines the driver interface in store-neutral terms (partitions, users, folders,
folder state, messages); ``maildir`` implements it for Dovecot Maildir++, with ``uidlist``
(dovecot-uidlist and the index header), ``subscriptions`` (Dovecot's subscriptions file, read
and merged) and ``mutf7`` (folder-name encoding) as helpers.
"""
