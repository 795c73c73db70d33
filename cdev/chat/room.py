"""The member side of the room protocol (version 2), independent of how records travel.

A :class:`RoomSession` is a state machine without I/O. Whatever carries the room (the broker's
TCP connection in :mod:`cdev.chat.client`, or a message bus) feeds it what the carrier learns:
who is present (:meth:`~RoomSession.on_welcome`, :meth:`~RoomSession.on_joined`,
:meth:`~RoomSession.on_info`, :meth:`~RoomSession.on_left`) and the records other members sent
(:meth:`~RoomSession.on_record`). After each call, :meth:`~RoomSession.take` returns what to do:
:class:`Send` a record to everyone (``to=None``) or to one member, :class:`Announce` this
member's public info, or show an :class:`Event`. The carrier is trusted with nothing but
delivery; everything end to end (PAKE, group key, signatures, sequence numbers) is here.
``docs/chat-protocol.md`` specifies the records.

Fatal conditions (a member's record that fails its checks, a sponsor that lies) raise
:class:`cdev.errors.CdevError`; hostile handshake records from others never do: they are
answered or ignored, so a stranger cannot end anyone's session.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cdev.chat import crypto
from cdev.chat.framing import (
    BROADCAST_TYPES,
    DATA,
    GOODBYE,
    JOIN_ACK,
    JOIN_FIN,
    JOIN_NAK,
    JOIN_REQ,
    KEYS,
    MAX_INFO,
    ROSTER,
    TYPE_NAMES,
    VOUCH,
    ProtocolError,
    decode_json,
    hex_field,
)
from cdev.chat.framing import (
    field as jfield,
)
from cdev.chat.options import NICK_RE
from cdev.chat.pake import MESSAGE_SIZE, Pake
from cdev.chat.safe import safe_text
from cdev.errors import CdevError, IntegrityError
from cdev.provider import Provider

NEWCOMER_ID = b"cdev-chat v2 newcomer"
SPONSOR_ID = b"cdev-chat v2 sponsor"
GROUP_KEY_SIZE = 32
GID_SIZE = 16
INFO_WAIT = 3.0  # seconds a newcomer waits for present members to announce a group
BUSY_RETRY = (0.05, 0.4)  # seconds (random between) before asking again after a JOIN_NAK
ROSTER_CHUNK = 64  # members per ROSTER record (fits MAX_BODY with 32-character nicks)
MAX_ROSTER = 65536
MAX_EARLY = 4096  # records held while joining, before the group key is known
MAX_HELD = 64  # records held from a member nobody vouched for yet
MAX_SPONSORING = 64  # open join runs per sponsor
SPONSOR_TIMEOUT = 30.0  # a join run without JOIN_FIN by then counts as failed
# PAKE runs a sponsor answers: a burst, then a slow refill; a run that ends in a confirmed
# member gives its token back, so only failed (or abandoned) runs use the budget.
SPONSOR_BURST = 8.0
SPONSOR_REFILL = 0.2  # per second
ENTRY = struct.Struct("!IQ32sB")  # roster entry: id, next sequence number, key, nick length
VOUCH_HEAD = struct.Struct("!I32s")  # id, key; the nick follows
KEY_ENTRY = struct.Struct("!I8s")  # KEYS entry: id, first 8 bytes of the key's fingerprint
KEYS_CHUNK = 1024


@dataclass(frozen=True)
class Send:
    """A record for everyone in the room (``to`` None) or for one member."""

    to: int | None
    rtype: int
    body: bytes


@dataclass(frozen=True)
class Announce:
    """This member's public info changed; the carrier tells the room (broker: ANNOUNCE)."""

    info: str


@dataclass(frozen=True)
class Event:
    """For the user: "message", "joined", "left", "goodbye", "admitted" or "notice"."""

    kind: str
    nick: str = ""
    text: bytes = b""
    fingerprint: str = ""


Action = Send | Announce | Event


@dataclass
class Peer:
    """Someone the carrier says is present (not authenticated)."""

    id: int
    nick: str
    order: int
    info: str = ""
    gid: str | None = None  # parsed from info

    def announce(self, info: str) -> None:
        self.info, self.gid = info, parse_info(info)


@dataclass
class Member:
    """A member of our group: its key came from our sponsor or from a vouch we verified."""

    id: int
    nick: str
    public: bytes
    key: Ed25519PublicKey
    fingerprint: str
    expected: int = 0  # next sequence number
    start: int = 0  # records numbered below were sent before we joined
    opener: crypto.Opener | None = None
    said_goodbye: bool = False
    sponsor: str = ""  # who vouched for it, as far as we saw


@dataclass
class _Sponsoring:
    nick: str
    public: bytes
    confirm: bytes
    started: float


def parse_info(info: str) -> str | None:
    """The group id a member announced (``g=<32 hex digits>``), if any."""
    if len(info) == 2 + 2 * GID_SIZE and info.startswith("g="):
        gid = info[2:]
        if all(c in "0123456789abcdef" for c in gid):
            return gid
    return None


def sender_keys(group_key: bytes, public: bytes) -> tuple[bytes, bytes]:
    """Per-sender sealing keys: bound to the sender's signing key."""
    return (
        crypto.derive(group_key, "sender enc", public),
        crypto.derive(group_key, "sender mac", public),
    )


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _nick(raw: str | bytes, what: str) -> str:
    try:
        nick = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        nick = ""
    if not NICK_RE.fullmatch(nick):
        raise ProtocolError(f"malformed {what}: bad nickname")
    return nick


class RoomSession:
    """One member's view of one room. Plain rooms (no passphrase) only track presence."""

    def __init__(
        self,
        nick: str,
        *,
        passphrase: bytes | None = None,
        provider: Provider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nick = nick
        self.encrypted = passphrase is not None
        if self.encrypted and provider is None:
            raise CdevError("an encrypted room needs a provider")
        self._passphrase = passphrase or b""
        self._provider = provider
        self._clock = clock
        self.id = 0
        self.peers: dict[int, Peer] = {}
        self.members: dict[int, Member] = {}
        self.state = "new"  # waiting, joining, roster, vouching, admitted
        self.key = crypto.SigningKey() if self.encrypted else None
        self.group_key: bytes | None = None
        self.gid = ""
        self.fingerprint: str | None = None  # of the group key: equal for all its members
        self.last_refusal = ""
        self._actions: list[Action] = []
        self._order = 0
        self._sealer: crypto.Sealer | None = None
        self._wake: float | None = None
        self._info_deadline: float | None = None
        # newcomer side
        self._sponsor: Peer | None = None
        self._sponsor_group = 0
        self._pake: Pake | None = None
        self._nonce = b""
        self._request = b""
        self._busy: set[int] = set()  # sponsors that answered JOIN_NAK
        self._channel: crypto.Opener | None = None
        self._roster_left = 0
        self._roster: list[Member] = []
        self._pending_key = b""
        self._fin = b""
        self._early: list[tuple[int, int, bytes]] = []
        # sponsor side
        self._sponsoring: dict[int, _Sponsoring] = {}
        self._asked: OrderedDict[int, None] = OrderedDict()  # one run per newcomer id
        self._tokens = SPONSOR_BURST
        self._stamp = clock()
        # members not vouched for yet, and the foreign ones already reported
        self._held: dict[int, list[tuple[int, bytes]]] = {}
        self._ignored: set[int] = set()

    # -- results ---------------------------------------------------------------------------
    def take(self) -> list[Action]:
        """What to do after the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    @property
    def admitted(self) -> bool:
        return self.state == "admitted"

    @property
    def wakeup(self) -> float | None:
        """When (on ``clock``) to call :meth:`on_timer` next, if at all."""
        return self._wake

    @property
    def info(self) -> str:
        return f"g={self.gid}" if self.gid else ""

    @property
    def key_fingerprint(self) -> str | None:
        return self.key.fingerprint if self.key else None

    def _event(self, kind: str, nick: str = "", text: str | bytes = b"", fp: str = "") -> None:
        data = text.encode() if isinstance(text, str) else text
        self._actions.append(Event(kind, nick, data, fp))

    # -- what the carrier tells us ---------------------------------------------------------
    def on_welcome(self, my_id: int, present: list[tuple[int, str, str]]) -> None:
        """We are in the room as ``my_id``; ``present`` is (id, nick, info) of the others."""
        self.id = my_id
        for pid, nick, info in present:
            self._add_peer(pid, nick, info)
        if not self.encrypted:
            self.state = "admitted"
            self._actions.append(Event("admitted"))
            return
        self.state = "waiting"
        self._decide()

    def on_joined(self, pid: int, nick: str, info: str = "") -> None:
        peer = self._add_peer(pid, nick, info)
        if not self.encrypted:
            self._event("joined", peer.nick)
        elif self.state == "waiting":
            self._decide()

    def on_info(self, pid: int, info: str) -> None:
        peer = self.peers.get(pid)
        if peer is None or len(info) > MAX_INFO:
            return
        peer.announce(info)
        gid = peer.gid
        if gid and self.gid and gid != self.gid and pid not in self.members:
            self._drop_foreign(peer)
        if self.state == "waiting":
            self._decide()

    def on_left(self, pid: int, reason: str) -> None:
        peer = self.peers.pop(pid, None)
        self._held.pop(pid, None)
        self._asked.pop(pid, None)
        run = self._sponsoring.pop(pid, None)
        if run is not None:  # left before confirming: its run stays spent
            self._event("notice", text=f"a join by {run.nick} was abandoned before it confirmed")
        sponsor = self._sponsor
        if sponsor is not None and sponsor.id == pid and self.state in ("joining", "roster"):
            raise CdevError(f"{sponsor.nick} left before admitting us: join again")
        if sponsor is not None and sponsor.id == pid and self.state == "vouching":
            raise CdevError(f"{sponsor.nick} left before vouching for us: join again")
        member = self.members.pop(pid, None)
        if member is not None:
            if member.opener is not None:
                member.opener.close()
            text = safe_text(reason, 200)
            if self.encrypted and text == "goodbye" and not member.said_goodbye:
                text = "left without an authenticated goodbye"
            self._event("left", member.nick, text, member.fingerprint)
        elif peer is not None and not self.encrypted:
            self._event("left", peer.nick, safe_text(reason, 200))
        if self.state == "waiting":
            self._decide()

    def on_timer(self) -> None:
        if self._wake is not None and self._clock() >= self._wake:
            self._wake = None
            if self.state == "waiting":
                self._decide()

    def on_record(self, sender: int, rtype: int, body: bytes) -> None:
        """A record ``sender`` sent to the room or to us."""
        if not self.encrypted:
            self._plain_record(sender, rtype, body)
        elif rtype in BROADCAST_TYPES:
            self._group_record(sender, rtype, body)
        elif rtype == JOIN_REQ:
            self._on_request(sender, body)
        elif rtype == JOIN_FIN:
            self._on_fin(sender, body)
        elif rtype == JOIN_ACK:
            self._on_ack(sender, body)
        elif rtype == ROSTER:
            self._on_roster(sender, body)
        elif rtype == JOIN_NAK:
            self._on_nak(sender, body)
        else:
            raise ProtocolError(f"unexpected {TYPE_NAMES.get(rtype, rtype)} record in a room")

    # -- what the user does ----------------------------------------------------------------
    def message(self, text: bytes) -> Send:
        """A message for everyone (sealed and signed in an encrypted room)."""
        return Send(None, DATA, self._seal(DATA, text) if self.encrypted else text)

    def goodbye(self) -> Send:
        return Send(None, GOODBYE, self._seal(GOODBYE, b"") if self.encrypted else b"")

    def close(self) -> None:
        for part in (self._sealer, self._channel):
            if part is not None:
                part.close()
        self._sealer = self._channel = None
        for m in self.members.values():
            if m.opener is not None:
                m.opener.close()
                m.opener = None

    # -- presence --------------------------------------------------------------------------
    def _add_peer(self, pid: int, nick: str, info: str) -> Peer:
        nick = _nick(nick, "member announcement")
        if pid == self.id or pid in self.peers:
            raise IntegrityError(f"the room announced member {nick!r} (id {pid}) twice")
        self._order += 1
        peer = Peer(pid, nick, self._order)
        peer.announce(info if len(info) <= MAX_INFO else "")
        self.peers[pid] = peer
        if not self.encrypted:
            self.members[pid] = Member(pid, nick, b"", _NO_KEY, "")
        return peer

    def _plain_record(self, sender: int, rtype: int, body: bytes) -> None:
        peer = self.peers.get(sender)
        member = self.members.get(sender)
        if peer is None or member is None or member.said_goodbye:
            raise ProtocolError(f"record from unknown or departed member {sender}")
        if rtype == DATA:
            self._event("message", peer.nick, body)
        elif rtype == GOODBYE:
            member.said_goodbye = True
            self._event("goodbye", peer.nick)
        else:
            raise ProtocolError(f"unexpected {TYPE_NAMES.get(rtype, rtype)} record in a plain room")

    # -- sealed group records --------------------------------------------------------------
    def _signed_part(self, rtype: int, sealed: bytes) -> bytes:
        return crypto.LABEL + b"record\0" + bytes.fromhex(self.gid) + bytes([rtype]) + sealed

    def _seal(self, rtype: int, plaintext: bytes) -> bytes:
        if self._sealer is None or self.key is None:
            raise CdevError("not admitted to the room yet")
        sealed = self._sealer.seal(rtype, plaintext)
        return sealed + self.key.sign(self._signed_part(rtype, sealed))

    def _group_record(self, sender: int, rtype: int, body: bytes) -> None:
        if self.group_key is None:
            if len(self._early) >= MAX_EARLY:
                raise CdevError("too many records arrived while joining the room")
            self._early.append((sender, rtype, body))
            return
        member = self.members.get(sender)
        if member is None:
            self._hold(sender, rtype, body)
            return
        if member.said_goodbye:
            raise ProtocolError(f"record from {member.nick} after its goodbye")
        text = self._open(member, rtype, body)
        if text is None:
            return
        if rtype == DATA:
            self._event("message", member.nick, text, member.fingerprint)
        elif rtype == GOODBYE:
            member.said_goodbye = True
            self._event("goodbye", member.nick)
        elif rtype == KEYS:
            self._on_keys(member, text)
        else:
            self._on_vouch(member, text)

    def _open(self, member: Member, rtype: int, body: bytes) -> bytes | None:
        n = len(body)
        if n < crypto.MIN_SEALED + crypto.SIG_SIZE:
            raise IntegrityError(f"malformed encrypted record from {member.nick} ({n} bytes)")
        sealed, sig = body[: -crypto.SIG_SIZE], body[-crypto.SIG_SIZE :]
        (seq,) = crypto.SEQ.unpack_from(sealed)
        if seq < member.start:
            return None  # sent before we joined: not ours to read, never shown
        if member.opener is None:
            assert self.group_key is not None and self._provider is not None
            enc, mac = sender_keys(self.group_key, member.public)
            member.opener = crypto.Opener(self._provider, enc, mac, who=member.nick)

        def signature() -> None:
            if not crypto.verify(member.key, sig, self._signed_part(rtype, sealed)):
                raise IntegrityError(
                    f"forged record: not signed by {member.nick}'s key "
                    f"({member.fingerprint}); another member tried to impersonate it"
                )

        member.opener.expected = member.expected
        text = member.opener.open(rtype, sealed, signature)
        member.expected = member.opener.expected
        return text

    def _hold(self, sender: int, rtype: int, body: bytes) -> None:
        """A record from someone who is not (yet) in our group."""
        if sender == self.id:
            raise IntegrityError("the room sent our own record back to us")
        if sender in self._ignored:
            return
        peer = self.peers.get(sender)
        if peer is not None and peer.gid and peer.gid != self.gid:
            self._drop_foreign(peer)
            return
        held = self._held.setdefault(sender, [])
        if len(held) >= MAX_HELD:
            del self._held[sender]
            self._ignored.add(sender)
            name = peer.nick if peer else f"member {sender}"
            self._event("notice", text=f"ignoring {name}: nobody in the group vouched for it")
            return
        held.append((rtype, body))

    def _drop_foreign(self, peer: Peer) -> None:
        self._held.pop(peer.id, None)
        if peer.id not in self._ignored:
            self._ignored.add(peer.id)
            self._event(
                "notice",
                text=f"{peer.nick} is in another group of this room (another passphrase): "
                "its messages are not shown",
            )

    def _on_keys(self, newcomer: Member, text: bytes) -> None:
        """A newcomer lists the keys its sponsor gave it: each member checks what it knows,
        so a sponsor that handed out a false key (to forge messages) is caught."""
        if len(text) % KEY_ENTRY.size:
            raise IntegrityError(f"malformed KEYS record from {newcomer.nick}")
        assert self.key is not None
        by = newcomer.sponsor or "its sponsor"
        for pid, short in KEY_ENTRY.iter_unpack(text):
            if pid == self.id:
                mine = self.key.public
                if short != _short(mine):
                    self._event(
                        "notice",
                        text=f"WARNING: {newcomer.nick} was given a false key for you (by "
                        f"{by}): messages it shows as yours may be forged",
                    )
                continue
            known = self.members.get(pid)
            if known is not None and pid != newcomer.id and short != _short(known.public):
                self._event(
                    "notice",
                    text=f"WARNING: {newcomer.nick} was given another key for {known.nick} "
                    f"than ours (by {by}): one of them may be forging messages",
                )

    def _on_vouch(self, sponsor: Member, text: bytes) -> None:
        if len(text) <= VOUCH_HEAD.size:
            raise IntegrityError(f"malformed VOUCH record from {sponsor.nick}")
        pid, public = VOUCH_HEAD.unpack_from(text)
        try:
            nick = _nick(text[VOUCH_HEAD.size :], "VOUCH record")
        except ProtocolError:
            raise IntegrityError(f"malformed VOUCH record from {sponsor.nick}") from None
        if pid == self.id:
            sponsor_id = self._sponsor.id if self._sponsor else None
            if self.state == "vouching" and sponsor.id == sponsor_id:
                assert self.key is not None
                if public != self.key.public:
                    raise IntegrityError(f"{sponsor.nick} vouched for us with another key")
                self._admitted()
                return
            raise IntegrityError(f"{sponsor.nick} vouched for us again")
        if pid in self.members:
            raise IntegrityError(f"{sponsor.nick} vouched again for member {nick!r}")
        member = Member(pid, nick, public, crypto.load_public(public), _fp(public))
        member.sponsor = sponsor.nick
        self.members[pid] = member
        self._ignored.discard(pid)
        self._event("joined", nick, f"vouched for by {sponsor.nick}", member.fingerprint)
        for rtype, body in self._held.pop(pid, []):
            self._group_record(pid, rtype, body)

    # -- joining: the newcomer's side ------------------------------------------------------
    def _decide(self) -> None:
        """Found a group, wait for announcements, or ask one member to sponsor us."""
        now = self._clock()
        if not self.peers:
            self._found(None)
            return
        groups: dict[str, list[Peer]] = {}
        for peer in self.peers.values():
            if peer.gid:
                groups.setdefault(peer.gid, []).append(peer)
        if not groups:
            # Members are present but none announced a group yet: they are joining. A member
            # that never announces (a squatter) is only waited for so long.
            if self._info_deadline is None:
                self._info_deadline = now + INFO_WAIT
            if now >= self._info_deadline:
                self._found("nobody present announced a group in time")
            else:
                self._wake = self._info_deadline
            return
        # The largest group; between equals, the one with the most recent member (a member
        # who mistyped the passphrase first is not picked again once others are there).
        _, best = max(groups.items(), key=lambda kv: (len(kv[1]), max(p.order for p in kv[1])))
        # Its longest-standing member; after a refusal ("busy") the next one.
        free = [p for p in best if p.id not in self._busy] or best
        if len(free) == len(best):
            self._busy.clear()
        sponsor = min(free, key=lambda p: p.order)
        self._ask(sponsor, len(best))

    def _ask(self, sponsor: Peer, group_size: int) -> None:
        assert self.key is not None
        self._wake = None
        self._sponsor, self._sponsor_group = sponsor, group_size
        self.state = "joining"
        if self._pake is not None:
            # Asked before and refused: nobody ran the PAKE on this request, so it can go to
            # another sponsor as it is (still at most one answer is ever processed).
            self._actions.append(Send(sponsor.id, JOIN_REQ, self._request))
            return
        self._pake = Pake(self._passphrase, True, NEWCOMER_ID, SPONSOR_ID)
        self._nonce = os.urandom(crypto.NONCE_SIZE)
        self._request = _json(
            {
                "nick": self.nick,
                "key": self.key.public.hex(),
                "nonce": self._nonce.hex(),
                "pake": self._pake.message.hex(),
            }
        )
        self.state = "joining"
        self._actions.append(Send(sponsor.id, JOIN_REQ, self._request))

    def _transcript(self, request: bytes, answer: bytes, newcomer: int, sponsor: int) -> bytes:
        return crypto.transcript(request, answer, struct.pack("!II", newcomer, sponsor))

    def _on_ack(self, sender: int, body: bytes) -> None:
        sponsor = self._sponsor
        if self.state != "joining" or sponsor is None or sender != sponsor.id:
            return  # not the answer we wait for: never processed, so never a guess
        assert self._pake is not None and self._provider is not None
        ack = decode_json(JOIN_ACK, body)
        if hex_field(ack, "nonce", crypto.NONCE_SIZE, JOIN_ACK) != self._nonce:
            raise IntegrityError(
                f"the join answer from {sponsor.nick} does not answer our request "
                "(replayed or misdirected): refused"
            )
        answer = hex_field(ack, "pake", MESSAGE_SIZE, JOIN_ACK)
        shared = self._pake.finish(answer)  # the one guess this connection gives away
        self._pake = None
        t = self._transcript(self._request, answer, self.id, sponsor.id)
        channel = crypto.Opener(
            self._provider,
            crypto.derive(shared, "join enc", t),
            crypto.derive(shared, "join mac", t),
            who=sponsor.nick,
        )
        self._channel = channel
        confirm = hex_field(ack, "confirm", crypto.TAG_SIZE, JOIN_ACK)
        if not hmac.compare_digest(confirm, channel.mac(b"sponsor\0" + t)):
            self._actions.append(Send(sponsor.id, JOIN_FIN, _json({"ok": False})))
            self._channel = None
            channel.close()
            self._wrong_passphrase(sponsor)
            return
        sealed = jfield(ack, "welcome", str, JOIN_ACK)
        try:
            welcome = channel.open(JOIN_ACK, bytes.fromhex(sealed))
        except ValueError:
            raise ProtocolError("malformed JOIN_ACK record: bad 'welcome'") from None
        if len(welcome) != GROUP_KEY_SIZE + 4:
            raise ProtocolError("malformed JOIN_ACK record: bad 'welcome'")
        (count,) = struct.unpack_from("!I", welcome, GROUP_KEY_SIZE)
        if not 1 <= count <= MAX_ROSTER:
            raise ProtocolError(f"malformed JOIN_ACK record: {count} members")
        self._pending_key = welcome[:GROUP_KEY_SIZE]
        self._roster_left = count
        self._roster = []
        self._fin = channel.mac(b"newcomer\0" + t)
        self.state = "roster"

    def _wrong_passphrase(self, sponsor: Peer) -> None:
        if self._sponsor_group <= 1:
            # One member against one: nobody can tell who mistyped. Do not let a typo (or a
            # squatter) lock us out: start our own group and say so.
            self._found(
                f"the passphrase does not match {sponsor.nick}'s, the only member of its "
                "group: one of you mistyped it (or it is not who you think). You are in a "
                f"group of your own; messages from {sponsor.nick} are not shown"
            )
            return
        raise CdevError(
            f"wrong passphrase: {sponsor.nick} could not confirm it (its group has "
            f"{self._sponsor_group} members); no message was exchanged"
        )

    def _on_roster(self, sender: int, body: bytes) -> None:
        sponsor = self._sponsor
        if self.state != "roster" or sponsor is None or sender != sponsor.id:
            return
        assert self._channel is not None and self.key is not None
        data = self._channel.open(ROSTER, body)
        pos = 0
        while pos < len(data):
            if len(data) - pos < ENTRY.size:
                raise ProtocolError("malformed ROSTER record")
            pid, seq, public, length = ENTRY.unpack_from(data, pos)
            pos += ENTRY.size
            nick = _nick(data[pos : pos + length], "ROSTER record")
            pos += length
            if pid == self.id or any(m.id == pid for m in self._roster):
                raise IntegrityError(f"{sponsor.nick} sent a roster with a duplicate member")
            fp = _fp(public)
            member = Member(pid, nick, public, crypto.load_public(public), fp, seq, seq)
            self._roster.append(member)
            self._roster_left -= 1
        if self._roster_left < 0:
            raise ProtocolError("malformed ROSTER record: more members than announced")
        if self._roster_left:
            return
        if not any(m.id == sponsor.id for m in self._roster):
            raise IntegrityError(f"{sponsor.nick}'s roster does not list itself")
        self._install(self._pending_key, self._roster)
        self._channel.close()
        self._channel = None
        self._actions.append(Send(sponsor.id, JOIN_FIN, _json({"confirm": self._fin.hex()})))
        self.state = "vouching"
        early, self._early = self._early, []
        for sid, rtype, rbody in early:
            self._group_record(sid, rtype, rbody)

    def _on_nak(self, sender: int, body: bytes) -> None:
        sponsor = self._sponsor
        if self.state != "joining" or sponsor is None or sender != sponsor.id:
            return
        try:
            reason = str(jfield(decode_json(JOIN_NAK, body), "message", str, JOIN_NAK))
        except ProtocolError:
            reason = "(unreadable)"
        self.last_refusal = f"{sponsor.nick} would not sponsor us: {safe_text(reason, 200)}"
        # No PAKE ran, so no guess was given: ask again shortly (the driver's handshake
        # timeout bounds how long).
        self._busy.add(sponsor.id)
        self.state = "waiting"
        self._wake = self._clock() + random.uniform(*BUSY_RETRY)

    def _install(self, group_key: bytes, roster: list[Member]) -> None:
        assert self._provider is not None and self.key is not None
        self.group_key = group_key
        self.gid = crypto.derive(group_key, "group id", b"", GID_SIZE).hex()
        self.fingerprint = crypto.fingerprint(group_key, b"group")
        self._sealer = crypto.Sealer(self._provider, *sender_keys(group_key, self.key.public))
        self.members = {m.id: m for m in roster}
        for peer in self.peers.values():
            if peer.gid and peer.gid != self.gid and peer.id not in self.members:
                self._drop_foreign(peer)

    def _found(self, why: str | None) -> None:
        if why:
            self._event("notice", text=why)
        self._install(os.urandom(GROUP_KEY_SIZE), [])
        self._early.clear()
        self._admitted()

    def _admitted(self) -> None:
        self.state = "admitted"
        self._wake = None
        self._actions.append(Announce(self.info))
        entries = [KEY_ENTRY.pack(m.id, _short(m.public)) for m in self.members.values()]
        for i in range(0, len(entries), KEYS_CHUNK):
            body = self._seal(KEYS, b"".join(entries[i : i + KEYS_CHUNK]))
            self._actions.append(Send(None, KEYS, body))
        self._actions.append(Event("admitted", self.nick, b"", self.key_fingerprint or ""))

    # -- joining: the sponsor's side -------------------------------------------------------
    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(SPONSOR_BURST, self._tokens + (now - self._stamp) * SPONSOR_REFILL)
        self._stamp = now
        for pid, run in list(self._sponsoring.items()):
            if now - run.started > SPONSOR_TIMEOUT:
                del self._sponsoring[pid]  # abandoned: its token stays spent

    def _nak(self, to: int, message: str) -> None:
        self._actions.append(Send(to, JOIN_NAK, _json({"message": message})))

    def _on_request(self, sender: int, body: bytes) -> None:
        if self.state != "admitted":
            self._nak(sender, "not admitted to a group yet")
            return
        assert self._provider is not None and self.group_key is not None and self.key
        try:
            req = decode_json(JOIN_REQ, body)
            nick = _nick(jfield(req, "nick", str, JOIN_REQ), "JOIN_REQ record")
            public = hex_field(req, "key", crypto.KEY_SIZE, JOIN_REQ)
            key = crypto.load_public(public)
            nonce = hex_field(req, "nonce", crypto.NONCE_SIZE, JOIN_REQ)
            theirs = hex_field(req, "pake", MESSAGE_SIZE, JOIN_REQ)
        except CdevError as exc:
            self._nak(sender, f"refused: {exc}")
            return
        if sender in self._asked or sender in self.members or sender == self.id:
            self._nak(sender, "refused: one join attempt per connection")
            return
        self._refill()
        if self._tokens < 1 or len(self._sponsoring) >= MAX_SPONSORING:
            self._nak(sender, "busy: too many joins at once, or too many failed ones")
            return
        pake = Pake(self._passphrase, False, NEWCOMER_ID, SPONSOR_ID)
        try:
            shared = pake.finish(theirs)
        except ProtocolError as exc:
            self._nak(sender, f"refused: {exc}")
            return
        self._tokens -= 1
        self._asked[sender] = None
        while len(self._asked) > 65536:
            self._asked.popitem(last=False)
        t = self._transcript(body, pake.message, sender, self.id)
        channel = crypto.Sealer(
            self._provider,
            crypto.derive(shared, "join enc", t),
            crypto.derive(shared, "join mac", t),
        )
        try:
            roster = [m for m in self.members.values() if not m.said_goodbye]
            me = Member(self.id, self.nick, self.key.public, _NO_KEY, "", self._sealer_seq())
            roster.append(me)
            welcome = channel.seal(JOIN_ACK, self.group_key + struct.pack("!I", len(roster)))
            ack = {
                "nonce": nonce.hex(),
                "pake": pake.message.hex(),
                "confirm": channel.mac(b"sponsor\0" + t).hex(),
                "welcome": welcome.hex(),
            }
            self._actions.append(Send(sender, JOIN_ACK, _json(ack)))
            for i in range(0, len(roster), ROSTER_CHUNK):
                chunk = b"".join(_entry(m) for m in roster[i : i + ROSTER_CHUNK])
                self._actions.append(Send(sender, ROSTER, channel.seal(ROSTER, chunk)))
            confirm = channel.mac(b"newcomer\0" + t)
        finally:
            channel.close()
        del key  # checked above: a newcomer must present a valid key
        self._sponsoring[sender] = _Sponsoring(nick, public, confirm, self._clock())

    def _sealer_seq(self) -> int:
        assert self._sealer is not None
        return self._sealer.seq

    def _on_fin(self, sender: int, body: bytes) -> None:
        run = self._sponsoring.pop(sender, None)
        if run is None:
            return
        try:
            obj = decode_json(JOIN_FIN, body)
            confirm = hex_field(obj, "confirm", crypto.TAG_SIZE, JOIN_FIN)
        except ProtocolError:
            confirm = b""
        if not confirm or not hmac.compare_digest(confirm, run.confirm):
            self._event(
                "notice",
                text=f"a join by {run.nick} failed the passphrase check: not admitted",
            )
            return  # the run's token stays spent
        self._tokens = min(SPONSOR_BURST, self._tokens + 1)  # a confirmed member: give it back
        if sender in self.members:
            return
        member = Member(
            sender, run.nick, run.public, crypto.load_public(run.public), _fp(run.public)
        )
        self.members[sender] = member
        vouch = VOUCH_HEAD.pack(sender, run.public) + run.nick.encode()
        self._actions.append(Send(None, VOUCH, self._seal(VOUCH, vouch)))
        self._event("joined", run.nick, "vouched for by us", member.fingerprint)
        for rtype, rbody in self._held.pop(sender, []):
            self._group_record(sender, rtype, rbody)


def _entry(m: Member) -> bytes:
    nick = m.nick.encode()
    return ENTRY.pack(m.id, m.expected, m.public, len(nick)) + nick


def _fp(public: bytes) -> str:
    return crypto.key_fingerprint(public)


def _short(public: bytes) -> bytes:
    return crypto.key_digest(public)[:8]


# Plain rooms' members and the sponsor's own roster entry carry no verifying key.
_NO_KEY: Any = None
