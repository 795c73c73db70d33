"""The member-side room protocol (cdev.chat.room) driven by a minimal in-memory carrier: the
same API a message bus drives. Covers what needs a member to misbehave from the inside: a
lying sponsor, a sponsor's PAKE budget, records sent before a join, other groups."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from cdev.chat import crypto
from cdev.chat.framing import DATA, JOIN_NAK, JOIN_REQ
from cdev.chat.room import SPONSOR_BURST, Announce, Event, RoomSession, Send
from cdev.errors import CdevError
from cdev.plugins import get_registry

PROVIDER = get_registry().open_provider("software")


class Carrier:
    """Presence and in-order delivery, nothing else (what the broker does)."""

    def __init__(self) -> None:
        self.members: dict[int, RoomSession] = {}
        self.info: dict[int, str] = {}
        self.events: dict[int, list[Event]] = {}
        self.queue: deque[tuple[int, Send]] = deque()
        self._ids = itertools.count(1)

    def join(self, nick: str, passphrase: str | None = "pw") -> RoomSession:
        s = RoomSession(nick, passphrase=passphrase.encode() if passphrase else None,
                        provider=PROVIDER)  # fmt: skip
        mid = next(self._ids)
        present = [(i, m.nick, self.info.get(i, "")) for i, m in self.members.items()]
        for other in self.members.values():
            other.on_joined(mid, nick, "")
        self.members[mid] = s
        self.events[mid] = []
        s.on_welcome(mid, present)
        self.pump()
        return s

    def leave(self, s: RoomSession, reason: str = "goodbye") -> None:
        del self.members[s.id]
        for other in self.members.values():
            other.on_left(s.id, reason)
        self.pump()

    def send(self, s: RoomSession, action: Send) -> None:
        self.queue.append((s.id, action))
        self.pump()

    def pump(self) -> None:
        for mid, s in list(self.members.items()):
            self._collect(mid, s)
        while self.queue:
            sender, action = self.queue.popleft()
            targets = [action.to] if action.to is not None else list(self.members)
            for mid in targets:
                if mid != sender and mid in self.members:
                    self.members[mid].on_record(sender, action.rtype, action.body)
            for mid, s in list(self.members.items()):
                self._collect(mid, s)

    def _collect(self, mid: int, s: RoomSession) -> None:
        for action in s.take():
            if isinstance(action, Send):
                self.queue.append((mid, action))
            elif isinstance(action, Announce):
                self.info[mid] = action.info
                for oid, other in self.members.items():
                    if oid != mid:
                        other.on_info(mid, action.info)
            else:
                self.events[mid].append(action)

    def said(self, s: RoomSession, kind: str) -> list[Event]:
        return [e for e in self.events[s.id] if e.kind == kind]


def test_members_join_through_sponsors_and_talk() -> None:
    room = Carrier()
    alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
    assert alice.admitted and bob.admitted and carol.admitted
    assert alice.fingerprint == bob.fingerprint == carol.fingerprint
    room.send(carol, carol.message(b"hello"))
    for s in (alice, bob):
        (ev,) = room.said(s, "message")
        assert (ev.nick, ev.text, ev.fingerprint) == ("carol", b"hello", carol.key_fingerprint)
    assert room.said(carol, "notice") == []  # no warnings anywhere
    assert room.said(alice, "notice") == [] and room.said(bob, "notice") == []


def test_a_lying_sponsor_is_caught_by_the_member_it_lied_about() -> None:
    room = Carrier()
    alice, bob = room.join("alice"), room.join("bob")
    # alice will tell the next newcomer a key of her own choosing for bob
    real = alice.members[bob.id].public
    alice.members[bob.id].public = crypto.SigningKey().public
    carol = room.join("carol")
    alice.members[bob.id].public = real
    assert carol.admitted
    warnings = [e.text for e in room.said(bob, "notice")]
    assert any(b"WARNING: carol was given a false key for you (by alice)" in w for w in warnings)


def test_records_sent_before_a_join_are_never_shown_to_the_newcomer() -> None:
    room = Carrier()
    alice = room.join("alice")
    old = alice.message(b"before carol")  # sequence 0
    room.send(alice, old)
    carol = room.join("carol")  # alice's VOUCH for carol is her sequence 1
    carol.on_record(alice.id, DATA, old.body)  # replayed by the carrier after the join
    assert [e for e in carol.take() if isinstance(e, Event) and e.kind == "message"] == []
    after = alice.message(b"after")
    room.send(alice, after)
    assert [e.text for e in room.said(carol, "message")] == [b"after"]
    with pytest.raises(CdevError, match=r"replayed record from alice \(sequence 2, expected 3\)"):
        carol.on_record(alice.id, DATA, after.body)


def test_a_sponsor_answers_only_a_few_failed_guesses() -> None:
    room = Carrier()
    alice = room.join("alice")
    refused = 0
    notices: list[Event] = []
    for i in range(int(SPONSOR_BURST) + 3):
        guesser = RoomSession(f"g{i}", passphrase=b"guess", provider=PROVIDER)
        gid = 100 + i
        alice.on_joined(gid, f"g{i}", "")
        guesser.on_welcome(gid, [(alice.id, "alice", alice.info)])
        (req,) = [a for a in guesser.take() if isinstance(a, Send)]
        assert req.rtype == JOIN_REQ
        alice.on_record(gid, JOIN_REQ, req.body)
        taken = alice.take()
        notices += [e for e in taken if isinstance(e, Event) and e.kind == "notice"]
        answers = [a for a in taken if isinstance(a, Send) and a.to == gid]
        if answers[0].rtype == JOIN_NAK:
            refused += 1
            assert b"busy" in answers[0].body
        else:
            for a in answers:
                guesser.on_record(alice.id, a.rtype, a.body)  # wrong passphrase: it founds
            for a in guesser.take():
                if isinstance(a, Send) and a.to == alice.id:
                    alice.on_record(gid, a.rtype, a.body)
        guesser.close()
    assert refused == 3  # 8 runs, then the budget is spent
    notices += [e for e in alice.take() if isinstance(e, Event) and e.kind == "notice"]
    assert [b"failed the passphrase check" in e.text for e in notices] == [True] * 8


def test_another_group_is_named_once_and_never_shown() -> None:
    room = Carrier()
    alice, bob = room.join("alice"), room.join("bob")
    mallory = room.join("mallory")
    stranger = RoomSession("stranger", passphrase=b"x", provider=PROVIDER)
    stranger.on_welcome(99, [])  # a founder of a group of its own, seen by everyone
    stranger.take()
    for s in (alice, bob, mallory):
        s.on_joined(99, "stranger", stranger.info)
        s.on_record(99, DATA, stranger.message(b"hi from elsewhere").body)
        notes = [e.text for e in s.take() if isinstance(e, Event)]
        assert any(b"stranger is in another group" in n for n in notes)
        assert not any(b"elsewhere" in n for n in notes)
