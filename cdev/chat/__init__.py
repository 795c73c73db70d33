"""``cdev chat``: two-peer and brokered chat, plain or end-to-end encrypted.

Modules, one job each: :mod:`framing` (records on the wire), :mod:`crypto` (keys, sealing),
:mod:`twopeer` (listen/connect), :mod:`broker` (the relay), :mod:`client` (a broker's peer),
:mod:`ui` (pipe mode and the rich terminal view). The wire protocol is specified in
``docs/chat-protocol.md``.
"""
