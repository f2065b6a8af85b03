"""Reading human negotiation text: the prices people write, and whether they agreed.

People write "$120", "120 dollars", "1.2k", a bare "120", "$20 off", "I paid $80",
"1000-1500$"; they agree with "deal", "works for me", "ok" and refuse with "no", "sorry",
"too low". `mentions` reads amounts and what kind of mention each is, `stated_price` the
one price a turn proposes (or None when that is ambiguous), `mark_echoes` turns repeats of
the other side's price into references, and `closing` finds the agreement that ends a
dialogue. Conservative by design: when in doubt, no price and no deal. Used by
`mams.domain.craigslist` to convert the CraigslistBargain dialogues into logs.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

import msgspec

from mams.domain.money import cents


class Turn(msgspec.Struct, frozen=True):
    """One line of a dialogue: `usr` is the seller, `sys` the buyer."""

    speaker: Literal["usr", "sys"]
    text: str
    strategy: str = ""


# -- prices in human text ------------------------------------------------------------------
MentionKind = Literal["offer", "reference", "relative"]


class Mention(msgspec.Struct, frozen=True):
    """An amount a person wrote: proposed (`offer`), cited as a fact such as what they
    paid (`reference`), or relative to another price (`relative`: "$20 off", a range)."""

    amount: Decimal
    kind: MentionKind


_AMOUNT = re.compile(
    r"(?P<pre>\$\s?)?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<cents>\d{1,2}))?(?![\d,.]\d)"
    r"(?P<kilo>\s?k\b)?(?P<post>\s?\$|\s?(?:dollars?|bucks|usd)\b)?",
    re.IGNORECASE,
)
_UNIT_AFTER = re.compile(
    r"[a-z%\"'+]|\s*(?:%|percent|miles?\b|mi\b|feet\b|foot\b|ft\b|inch|\"|years?\b|yrs?\b"
    r"|months?\b|mo\b|weeks?\b|days?\b|hours?\b|hrs?\b|min\b|mins\b|minutes?\b|gb\b|tb\b"
    r"|lbs?\b|pounds?\b|people|bed|bath|br\b|speeds?\b|mph\b|cc\b|hp\b|rooms?\b|pieces?\b"
    r"|pcs\b|units?\b|times?\b|pm\b|am\b|p\.m|a\.m|o'?clock|x\b)",
    re.IGNORECASE,
)
_RELATIVE_AFTER = re.compile(
    r"\s*(?:dollars?\s*|bucks\s*)?(?:off|more|less|extra|cheaper|higher|lower|discount|"
    r"difference|down|of (?:the|your|my) (?:listing|asking|list))\b",
    re.IGNORECASE,
)
_MALFORMED = re.compile(r"\$\s?\d{1,3},\d{1,2}(?![\d])|\$\s?\d+\.\d{3,}")
_RELATIVE_BEFORE = re.compile(
    r"\b(?:extra|another|additional|plus|take off|take it off|(?:knock|lower|drop|reduce|cut)"
    r"(?: it| off)?(?: by)?)"
    r"\s+\$?\s?$",
    re.IGNORECASE,
)
_REFERENCE_BEFORE = re.compile(
    r"\b(?:paid|bought|purchased|got (?:it|this|them|these|the \w+) for|costs? (?:me|us)"
    r"|(?:it|my) cost|retail|retails|brand new|new (?:for|at|it|they|these|ones?|costs?|price)"
    r"|originally|original|valued|worth|value|msrp|sells for|sold for|listed"
    r"|listing|resell|appraised|spent|deposit|fees?|utilit(?:y|ies)|bills?|shipping|tax"
    r"|you(?:'re| are) asking|you said|your (?:price|ask)|(?:is|are|was|were) over)"
    r"\b[^.!?$]{0,50}$",
    re.IGNORECASE,
)
_RANGE_AFTER = re.compile(r"\s?[-\u2013]\s?\$?\d")
_RANGE_BEFORE = re.compile(r"\d\s?[-\u2013]\s?$")
_YEAR_BEFORE = re.compile(r"\b(?:a|an|the|my|your|his|her|in|from|since|of)\s+$", re.I)
_YEAR_AFTER = re.compile(r"\s+[A-Z]|'?s\b")
_TIME_BEFORE = re.compile(r"\b(?:at|by|around|before|after|until|til)\s+$", re.IGNORECASE)


def mentions(text: str, listing: Decimal, *, years_are_common: bool = False) -> list[Mention]:
    """The amounts written in `text`, in order, with what kind of mention each is.

    An amount marked as money (`$`, `dollars`, `bucks`, `k`) always counts; a bare number
    counts only when it lies within a quarter and twice the `listing` price and no unit
    follows it (miles, years, %, feet, ...), so sizes, ages and times are not prices.
    With `years_are_common` (cars), a bare 1950-2035 is a model year, not a price.
    """
    out: list[Mention] = [
        Mention(Decimal(re.sub(r"[^\d]", "", m.group(0))), "relative")  # "$2,00": unreadable
        for m in _MALFORMED.finditer(text)
    ]
    for m in _AMOUNT.finditer(text):
        start, end = m.start(), m.end()
        before, after = text[:start], text[end:]
        # "360K" alone may be miles: a bare k-amount must be a plausible price too.
        marked = bool(m.group("pre") or m.group("post"))
        value = Decimal(m.group("num").replace(",", "") + "." + (m.group("cents") or "0"))
        if m.group("kilo"):
            value *= 1000
        if value <= 0 or not marked_or_plausible(value, listing, marked):
            continue
        if _RANGE_AFTER.match(after) or _RANGE_BEFORE.search(before):
            out.append(Mention(cents(value), "relative"))  # one end of a range "1000-1500"
            continue
        prev = before[-1:]
        if not m.group("pre") and (prev.isalnum() or (prev != "" and prev in "-/:#.")):
            continue  # part of a word, a date, a time or a phone number
        if not marked:
            if (after[:1] in ("/", ":") and after[1:2].isdigit()) or _UNIT_AFTER.match(after):
                continue
            year = 1950 <= value <= 2035 and value == value.to_integral()
            year_context = _YEAR_BEFORE.search(before) or _YEAR_AFTER.match(after)
            if year and (years_are_common or year_context):
                continue
            if value <= 12 and _TIME_BEFORE.search(before):
                continue
        elif m.group("post") is None and re.match(r"\s*%", after):
            continue
        kind: MentionKind = "offer"
        if _RELATIVE_AFTER.match(after) or _RELATIVE_BEFORE.search(before):
            kind = "relative"
        elif _REFERENCE_BEFORE.search(before[-60:]):
            kind = "reference"
        out.append(Mention(cents(value), kind))
    return out


def marked_or_plausible(value: Decimal, listing: Decimal, marked: bool) -> bool:
    """A marked amount is a price; a bare one only within [listing/4, 2 x listing]."""
    return marked or (listing / 4 <= value <= listing * 2)


def stated_price(found: Sequence[Mention]) -> Decimal | None:
    """The one price a turn proposes, or None when it proposes none or it is ambiguous
    (two different amounts, a range, or an amount relative to another)."""
    if any(m.kind == "relative" for m in found):
        return None
    offers = {m.amount for m in found if m.kind == "offer"}
    return offers.pop() if len(offers) == 1 else None


# -- how a dialogue ended ------------------------------------------------------------------
_STRONG_YES = re.compile(
    r"\b(?:deal|i accept|accepted|agreed|i agree|it'?s yours|you got it|u got (?:it|me)"
    r"|you got me|let'?s do it|lets do it|i'?ll take it|i will take it|i'?ll take \$?\d+"
    r"|make that deal|\$?\d+\$? it is|sounds (?:good|great)|(?:will|would) work for me"
    r"|works for me|that works|i(?:'ll| will| can) accept)\b",
    re.IGNORECASE,
)
_WEAK_YES = re.compile(
    r"\b(?:ok|okay|sure|yes|yeah|yep|alright|great|perfect|fair enough"
    r"|soudns good|would work|i can do|i could do|will do|reasonable|fine|fair|acceptable)\b",
    re.IGNORECASE,
)
# Any of these words makes a weak yes ("ok, but no") no agreement ...
_NO = re.compile(
    r"\b(?:no|not|can'?t|cannot|won'?t|wont|don'?t|sorry|reject|too (?:much|high|low)"
    r"|good luck|elsewhere|instead|unfortunately|pass)\b",
    re.IGNORECASE,
)
# ... while a strong yes ("that will work for me, I can't use it anyway") stands unless it
# refuses the deal itself.
_HARD_NO = re.compile(
    r"\b(?:no deal|not a deal|no thanks?|no thank you|reject|good luck|lowball"
    r"|(?:too|a little|a bit|a tad|little|bit|tad|very|really|kinda|pretty|way) (?:low|high|much)"
    r"|elsewhere|sorry|(?:can'?t|cannot|won'?t|wont|don'?t|not|couldn'?t) (?:\w+ )?"
    r"(?:make|do|accept|take|go|afford|agree|pay|sell|work|let))\b|^\s*no\b",
    re.IGNORECASE,
)
_NOT_NO = re.compile(r"\bno (?:problem|prob|worries)\b|\bnot a problem\b", re.IGNORECASE)


def _says_no(text: str, *, hard: bool = False) -> bool:
    return bool((_HARD_NO if hard else _NO).search(_NOT_NO.sub("", text)))


class Closing(msgspec.Struct, frozen=True):
    """An inferred agreement: turn `index` (of the merged turns) accepts `price`."""

    index: int
    by: Literal["buyer", "seller"]
    price: Decimal


def closing(turns: Sequence[Turn], found: Sequence[Sequence[Mention]]) -> Closing | None:
    """The agreement that ends the dialogue, or None.

    A turn among the last six closes when it says yes and not no, names no amount but
    the accepted one, and the last amount written before it is the other side's
    unambiguous price (or its own, matching the other side's price before that: "ok, I
    could do 4000" ... "we got a deal!"); the turns after it (small talk) name no other
    amount and do not refuse. A strong yes ("deal", "I'll take it", "works for me") may
    answer a price named turns earlier and stands beside a "can't" that does not refuse
    the deal; a weak yes ("ok", "sure", "sounds good") answers only the turn right before
    it, and any "no", "not", "can't" or "sorry" cancels it.
    """
    for c in range(len(turns) - 1, max(len(turns) - 7, -1), -1):
        turn = turns[c]
        strong = bool(_STRONG_YES.search(turn.text))
        if not (strong or _WEAK_YES.search(turn.text)) or _says_no(turn.text, hard=strong):
            continue
        price = _answered(turns, found, c, strong)
        if price is None or any(m.amount != price for k in range(c, len(turns)) for m in found[k]):
            continue
        if any(_says_no(turns[k].text, hard=True) for k in range(c + 1, len(turns))):
            continue
        return Closing(index=c, by="buyer" if turn.speaker == "sys" else "seller", price=price)
    return None


def _answered(
    turns: Sequence[Turn], found: Sequence[Sequence[Mention]], c: int, strong: bool
) -> Decimal | None:
    """The other side's price that turn `c` says yes to, if there is one."""
    priced = [k for k in range(c - 1, -1, -1) if found[k]]
    if not priced or (not strong and priced[0] != c - 1):
        return None
    last = priced[0]
    if any(_says_no(turns[k].text, hard=True) for k in range(last + 1, c)):
        return None
    price = stated_price(found[last])
    if turns[last].speaker != turns[c].speaker:
        return price
    # Its own last price, which matched the other side's price before it.
    if not strong or len(priced) < 2 or turns[priced[1]].speaker == turns[c].speaker:
        return None
    return price if price is not None and stated_price(found[priced[1]]) == price else None


def mark_echoes(
    turns: Sequence[Turn], found: Sequence[Sequence[Mention]], listing: Decimal
) -> list[list[Mention]]:
    """`found` with echoes made references: an amount a turn repeats from the other side's
    last priced turn, or the listing price (for the seller: beside another amount), is no
    proposal of its own when the turn also
    proposes another amount or refuses ("$75 is too low", "the asking price is $24, but if
    you could give me $15...", "$500 is a lot, can you do $300?")."""
    last: dict[str, set[Decimal]] = {}
    out: list[list[Mention]] = []
    for turn, mentioned in zip(turns, found, strict=True):
        other = "usr" if turn.speaker == "sys" else "sys"
        echoes = set(last.get(other, set()))
        if turn.speaker == "sys":
            echoes.add(listing)  # the buyer quoting the ask; the seller may repeat its own
        offers = {m.amount for m in mentioned if m.kind == "offer"}
        if len(offers) > 1:
            echoes.add(listing)
        if offers & echoes and (len(offers) > 1 or _says_no(turn.text, hard=True)):
            mentioned = [
                Mention(m.amount, "reference") if m.kind == "offer" and m.amount in echoes else m
                for m in mentioned
            ]
        out.append(list(mentioned))
        if mentioned:
            last[turn.speaker] = {m.amount for m in mentioned}
    return out
