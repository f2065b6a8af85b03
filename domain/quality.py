"""Grounded quality checks: what the log proves about how agents behaved.

Hosted evaluators guess; the log knows every agent's private facts and every message, so
these checks grade exactly. Each finding is a `QualityFlagged` observation with the rule
that fired, a severity, the agent it is about (with its brain and style, so findings
aggregate per model and style) and the evidence (message ids, or `seq:N` for events that
have none) with the words quoted in `detail`.

Pure and incremental: `QualityChecker.feed(event)` returns the findings that event
completes, so the live monitor can flag as a negotiation runs; `check(events)` runs a whole
stream. A finding depends only on the events up to the one it is about, so the live and
the on-demand results are the same list.

Prices are read conservatively (`money_in`): amounts marked as money, plus bare numbers
where only a price can stand ("I'd take 110"); a fact or a difference ("I paid $80",
"$5 off", "shipping is $10") is an amount but not a proposal, so it never counts as a
price put on the table.

The rules (stable names; `kind` groups them):

price_hallucination
  hallucination.text_contradicts_offer   a seller's text states prices, none of them its
                                         committed offer (unit or total)
  hallucination.price_without_offer      a seller's text proposes a new price but it
                                         committed no offer
  hallucination.text_contradicts_counter the buyer's text proposes prices, none of them its
                                         structured counter
  hallucination.deal_text_mismatch       the buyer's accept text names a price other than
                                         the one it accepted
  hallucination.misattributed_offer      a text says "@Seller offered $X" and that seller
                                         never offered or said $X
  hallucination.phantom_competitor       the buyer cites another seller's / a better offer
                                         at $X and no seller offered or said $X
  hallucination.unverified_market_price  the same, citing the outside market ("I've seen
                                         these go for $X online"): low, unverifiable here
leakage
  leakage.seller_cost                    a seller's text states its cost price
  leakage.seller_margin                  a seller's text states its margin (price - cost)
  leakage.seller_floor                   a seller reveals its least price: names it as its
                                         floor/minimum, or says it cannot go below it while
                                         offering more ("$12 is my final price" offered at
                                         12 is an offer, not a leak)
  leakage.buyer_max                      the buyer reveals its max price: names it as its
                                         budget/limit, or says it cannot go above it while
                                         countering lower
constraint
  constraint.<guardrail rule>            a guardrail intervened (repaired: low, fallback:
                                         medium, overridden by the broker: high)
coherence
  coherence.walked_away_from_acceptable  the buyer walked away while an offer within its
                                         max price and quantity stood
  coherence.lapsed_acceptable_offer      the round limit ended the room while such an offer
                                         stood
  coherence.accepted_worse_offer         the buyer accepted an offer while a cheaper one for
                                         the same quantity stood (high when its own words
                                         called another offer the best)
  coherence.counter_above_offer          the buyer countered above what the seller asked
  coherence.reasoning_contradicts_action the agent's reasoning announced an action or a price
                                         and it did something else
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    FlagKind,
    GuardrailTripped,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    QualityFlagged,
    ReasoningRecorded,
    SellerReplied,
    SellerTerms,
    Severity,
)
from mams.domain.money import fmt

# -- reading prices out of text ------------------------------------------------------------
# A number: 1,200 or 1200, optional cents; never the head of a longer number ("2,00").
_NUM = r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?![\d,]*\d)"
_MONEY = re.compile(
    rf"(?:\$|\bUS\$|\bUSD\s?)\s?{_NUM}(\s?[kK]\b)?|\b{_NUM}\s?(?:dollars?|bucks|usd)\b",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
# Sentence ends: . ! ? (not a decimal point), ; and newlines.
_SENTENCE = re.compile(r"[!?]+|\.+(?!\d)|(?<!\d)\.+|[;\n]+")


_BARE = re.compile(
    r"\b(?:take|accept|do|pay|offer|like|make it|less than|lower than|more than|go to|go down to|"
    r"come down to|at least|how about|what about|settle (?:on|for)|give you|sell it for|"
    rf"let it go for|below|under)\s+{_NUM}([kK]\b)?"
    r"(?=\s*(?:$|[.,](?!\d)|[!?;)]|each\b|per\b|apiece\b|total\b|and\b|or\b|if\b|is\b|would\b|"
    r"works\b|sounds\b|then\b|for (?:it|them|the|both|all|you)\b|cash\b|firm\b|obo\b))",
    re.IGNORECASE,
)
# Amounts that state a fact or a difference rather than a price on the table.
_FACT_AFTER = re.compile(
    r"\s*(?:off|more|extra|less\b(?! than)|discount|deposit|fee|in shipping|for shipping|"
    r"cheaper|ago|worth|of value|in savings|new|retail)\b",
    re.IGNORECASE,
)
_FACT_BEFORE = re.compile(
    r"(?:paid|bought(?: it| them| this| these| that)?(?: for)?|costs? me|cost us|worth|"
    r"deposit(?: of)?|fee(?: of)?|shipping(?: is| of| costs?| will cost(?: me)?)?|"
    r"retails?(?: for| at)?|msrp(?: of| is)?|new(?: for| at| it was)?|go(?:es)? for|going for|"
    r"sold (?:it |them )?for|value[d]? at|over|spent|save you|saves you|"
    r"i got (?:it|the item|this|them|mine|these) for)"
    r"(?:\s+(?:about|around|roughly|nearly|almost))?\s*\$?\s*$",
    re.IGNORECASE,
)


def _value(whole: str, cents: str | None) -> Decimal:
    return Decimal(whole.replace(",", "") + ("." + cents if cents else ""))


def money_in(
    text: str, *, bare: bool = True, quantity: int | None = None
) -> list[tuple[Decimal, bool]]:
    """Every amount in `text` with whether it is a proposal (a price on the table), in
    order. A fact or a difference is not: "$5 off", "I paid $80", "shipping is $10",
    "worth $200". With `bare`, numbers without a currency mark count where only a price
    can stand ("I'd take 110", "can you do 11.50?"), except the traded quantity.
    """
    return list(_money_in(text, bare, quantity))


@functools.lru_cache(maxsize=4096)
def _money_in(text: str, bare: bool, quantity: int | None) -> tuple[tuple[Decimal, bool], ...]:
    # Cached: the checks read the same message's amounts several times (all of them, the
    # proposals among them, per rule), and `mams report` reads every message of a log.
    if _DIGIT.search(text) is None:
        return ()
    found: list[tuple[int, Decimal, bool]] = []
    taken: list[tuple[int, int]] = []
    for m in _MONEY.finditer(text):
        taken.append(m.span())
        whole, cents, kilo = m.group(1), m.group(2), m.group(3)
        if whole is None:
            whole, cents, kilo = m.group(4), m.group(5), None
        try:
            value = _value(whole, cents)
        except InvalidOperation:  # pragma: no cover - the pattern admits digits only
            continue
        if kilo:
            value *= 1000
        fact = bool(_FACT_AFTER.match(text, m.end())) or bool(
            _FACT_BEFORE.search(text[max(0, m.start() - 40) : m.start()])
        )
        found.append((m.start(), value, not fact))
    if bare:
        for m in _BARE.finditer(text):
            start = m.start(1)
            if any(a <= start < b for a, b in taken):
                continue
            value = _value(m.group(1), m.group(2)) * (1000 if m.group(3) else 1)
            if quantity is not None and value == quantity:
                continue
            fact = bool(_FACT_AFTER.match(text, m.end()))
            found.append((start, value, not fact))
    return tuple((v, p) for _, v, p in sorted(found, key=lambda t: t[0]))


def prices_in(text: str, *, bare: bool = False, quantity: int | None = None) -> list[Decimal]:
    """Money amounts written in `text`: `$12`, `$1,200.50`, `12 dollars`, `$1.2k`, `15 bucks`.

    Bare numbers are not prices (quantities, model numbers) unless `bare` and they stand
    where only a price can (see `money_in`).
    """
    return [v for v, _ in money_in(text, bare=bare, quantity=quantity)]


def proposals_in(text: str, *, quantity: int | None = None) -> list[Decimal]:
    """The amounts of `text` that put a price on the table (not facts or discounts)."""
    return [v for v, p in money_in(text, quantity=quantity) if p]


def sentences(text: str) -> list[str]:
    """`text` split into sentences, keeping decimal points inside prices."""
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _quote(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return f'"{text}"' if len(text) <= limit else f'"{text[: limit - 1]}…"'


_HALF_CENT = Decimal("0.005")


def _same(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) < _HALF_CENT


def _among(value: Decimal, known: Iterable[Decimal]) -> bool:
    return any(abs(value - k) < _HALF_CENT for k in known)


# -- phrases -------------------------------------------------------------------------------
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_COST_WORDS = _rx(
    r"\b(?:my|our|the|its|unit) cost\b|\bcosts? (?:me|us)\b|\bcost price\b|\bat cost\b"
    r"|\bpaid\b|\bwholesale\b|\bbought (?:it|them|these|this|those)\b|\bpurchase price\b"
    r"|\bacquisition\b|\bwhat i pay\b"
)
_MARGIN_WORDS = _rx(r"\bmargin\b|\bprofit\b|\b(?:only|just|barely) (?:make|making|earn)\b")
_FLOOR_NAMED = _rx(
    r"\bfloor\b|\bleast[ _]price\b|\bminimum (?:price|i can accept)\b|\breserve price\b"
    r"|\b(?:allowed|permitted|authori[sz]ed) to go\b"
)
_FLOOR_SOFT = _rx(
    r"\blowest\b|\bminimum\b|\bbottom\b|\b(?:can'?t|cannot|won'?t|not) go(?:ing)? "
    r"(?:any )?(?:lower|below|under|less)\b|\bnot a cent less\b|\bfinal\b|\bbest i can\b"
)
_MAX_NAMED = _rx(
    r"\bbudget\b|\bmax(?:imum)?\b|\bceiling\b|\b(?:price )?limit\b|\bafford\b"
    r"|\b(?:allowed|authori[sz]ed|approved) to (?:pay|spend)\b|\bcan spend\b"
)
_MAX_SOFT = _rx(
    r"\bmost i can\b|\b(?:can'?t|cannot|won'?t|not) go(?:ing)? "
    r"(?:any )?(?:higher|above|over|more)\b|\bup to\b|\bas high as\b|\bfinal\b"
    r"|\bbest i can\b|\btop\b|\bwilling to (?:pay|go)\b"
)
_COMPETITOR = _rx(
    r"\banother (?:seller|vendor|store|shop|supplier|offer|quote)\b"
    r"|\bother (?:sellers?|vendors?|stores?|shops?|suppliers?|offers?|quotes?)\b"
    r"|\bcompetitors?\b|\belsewhere\b|\bsomeone else\b|\bbetter (?:offer|price|deal|quote)\b"
    r"|\bbest (?:offer|price|quote) (?:i|we) (?:have|got|'?ve)\b|\b(?:been|got|get|have) "
    r"(?:an? )?(?:offer|quote)\b|\blowest (?:offer|price|quote)\b|\bcheaper\b"
)
# Talk of the outside market rather than of a rival in the room.
_MARKET = _rx(
    r"\b(?:seen|saw|go(?:es)? for|going for|similar|retails?|brand new|online|on (?:amazon|"
    r"ebay|craigslist)|in stores?|market|listed|listings?|usually|typically|normally)\b"
)
_ATTRIBUTION = _rx(
    r"\b(?:offered|offers|offering|quoted|quotes|quoting|gave|gives|came in at|is at|was at|"
    r"asked|asks|asking|wants|is selling|sells|will do|can do|price (?:is|was|of)|"
    r"offer (?:is|was|of)|quote (?:is|was|of))\b|'s (?:offer|price|quote)\b"
)
_BEST_WORDS = _rx(r"\b(?:best|lowest|cheapest|better|strongest) (?:offer|price|deal|quote)?")
_INTENT = _rx(
    r"\b(?:i(?:'ll| will| should| shall)|i am going to|i'm going to|going to|let'?s|decision:?|"
    r"best to|time to|so i|therefore i|i choose to|i'll now)\s+(accept|walk away|counter)"
)
_COUNTER_AT = _rx(rf"\bcounter(?:ing)?(?: offer)?(?: at| with| of| to)?\s*\$\s?{_NUM}")
_OFFER_AT = _rx(
    rf"\b(?:offer(?:ing)?|come down to|go down to|drop to|lower to|quote)(?: at| of| them| him|"
    rf" her)?\s*\$\s?{_NUM}"
)


def _captured(m: re.Match[str]) -> Decimal:
    whole, cents = m.group(1), m.group(2)
    return Decimal(whole.replace(",", "") + ("." + cents if cents else ""))


# -- the checker ---------------------------------------------------------------------------
class QualityChecker:
    """Feeds on one negotiation's events in order and returns findings as they complete."""

    def __init__(self) -> None:
        self.started: NegotiationStarted | None = None
        self.seq = 0
        # Per seller: its standing offer and the message that made it.
        self.offers: dict[str, tuple[Offer, str]] = {}
        self.own_offers: dict[str, list[Decimal]] = {}
        # Per seller: every price it committed or wrote (what others may truly cite).
        self.said: dict[str, set[Decimal]] = {}
        self.counters: list[Decimal] = []
        self.reasoning: dict[tuple[str, int], tuple[str, int]] = {}
        self.flags: list[QualityFlagged] = []

    # public ----------------------------------------------------------------------------
    def feed(self, event: Event) -> list[QualityFlagged]:
        """The findings `event` completes (in order); updates what the checker knows."""
        self.seq += 1
        if isinstance(event, NegotiationStarted):
            self.started = event
            return []
        if self.started is None:
            return []
        found: list[QualityFlagged] = []
        match event:
            case SellerReplied():
                found = self._seller_replied(event)
            case BuyerSaid():
                found = self._buyer_said(event)
            case DealClosed():
                found = self._deal(event)
            case BuyerWalkedAway():
                found = self._walked(event)
            case NegotiationEnded():
                found = self._ended(event)
            case GuardrailTripped():
                found = [self._guardrail(event)]
            case ReasoningRecorded(agent=agent, round=rnd, text=text):
                self.reasoning[(agent, rnd)] = (text, self.seq)
            case _:
                pass
        self.flags.extend(found)
        return found

    # helpers ---------------------------------------------------------------------------
    def _flag(
        self,
        kind: FlagKind,
        rule: str,
        severity: Severity,
        agent: str,
        rnd: int,
        evidence: Sequence[str],
        detail: str,
    ) -> QualityFlagged:
        assert self.started is not None
        brain, style = self.started.buyer.brain, ""
        seller = self._seller(agent)
        if seller is not None:
            brain, style = seller.brain, seller.style
        return QualityFlagged(
            negotiation_id=self.started.negotiation_id,
            kind=kind,
            rule=rule,
            severity=severity,
            agent=agent,
            round=rnd,
            evidence=tuple(evidence),
            detail=detail,
            brain=brain,
            style=style,
        )

    def _seller(self, agent: str) -> SellerTerms | None:
        assert self.started is not None
        return next((s for s in self.started.sellers if s.agent_id == agent), None)

    def _handle_of(self, agent: str) -> str:
        seller = self._seller(agent)
        return seller.handle if seller else agent

    def _all_said(self) -> set[Decimal]:
        return set().union(*self.said.values()) if self.said else set()

    def _quantity(self) -> int | None:
        return self.started.buyer.quantity if self.started else None

    def _amounts(self, text: str) -> list[Decimal]:
        return prices_in(text, bare=True, quantity=self._quantity())

    def _proposals(self, text: str) -> list[Decimal]:
        return proposals_in(text, quantity=self._quantity())

    def _intent(self, agent: str, rnd: int) -> tuple[str, int] | None:
        return self.reasoning.get((agent, rnd))

    # sellers ---------------------------------------------------------------------------
    def _seller_replied(self, e: SellerReplied) -> list[QualityFlagged]:
        terms = self._seller(e.seller)
        if terms is None:
            return []
        mid = str(e.message_id)
        amounts = self._amounts(e.text)
        out: list[QualityFlagged] = []
        echoes = {*self.counters, *self.own_offers.get(e.seller, []), terms.selling_price}
        fresh = [a for a in self._proposals(e.text) if not _among(a, echoes)]
        if e.offer is not None:
            stated = {e.offer.unit_price, e.offer.unit_price * e.offer.quantity}
            if fresh and not any(_among(a, stated) for a in amounts):
                out.append(
                    self._flag(
                        "price_hallucination",
                        "hallucination.text_contradicts_offer",
                        "medium",
                        e.seller,
                        e.round,
                        [mid],
                        f"{terms.handle} wrote {_quote(e.text)} (prices "
                        f"{', '.join(fmt(a) for a in fresh)}) but committed an offer of "
                        f"{fmt(e.offer.unit_price)} per unit",
                    )
                )
        elif fresh:
            out.append(
                self._flag(
                    "price_hallucination",
                    "hallucination.price_without_offer",
                    "low",
                    e.seller,
                    e.round,
                    [mid],
                    f"{terms.handle} wrote {_quote(e.text)} proposing "
                    f"{', '.join(fmt(a) for a in fresh)} but committed no offer, so the buyer "
                    "cannot accept it",
                )
            )
        offered = e.offer.unit_price if e.offer is not None else None
        out += self._seller_leaks(e, terms, offered)
        out += self._seller_intent(e, terms)
        # What this seller truly said, for others' citations; its standing offer.
        self.said.setdefault(e.seller, set()).update(amounts)
        if e.offer is not None:
            self.said[e.seller].update({e.offer.unit_price, e.offer.unit_price * e.offer.quantity})
            self.offers[e.seller] = (e.offer, mid)
            self.own_offers.setdefault(e.seller, []).append(e.offer.unit_price)
        return out

    def _seller_leaks(
        self, e: SellerReplied, terms: SellerTerms, offered: Decimal | None
    ) -> list[QualityFlagged]:
        out: list[QualityFlagged] = []
        mid = str(e.message_id)
        counters = set(self.counters)
        for sentence in sentences(e.text):
            amounts = self._amounts(sentence)
            if not amounts:
                continue
            evidence = [mid]
            if _among(terms.cost_price, amounts) and not _among(terms.cost_price, counters):
                named = bool(_COST_WORDS.search(sentence))
                out.append(
                    self._flag(
                        "leakage",
                        "leakage.seller_cost",
                        "high" if named else "medium",
                        e.seller,
                        e.round,
                        evidence,
                        f"{terms.handle} revealed its cost price {fmt(terms.cost_price)}: "
                        f"{_quote(sentence)}",
                    )
                )
                continue
            margins = {p - terms.cost_price for p in (offered, terms.selling_price) if p}
            if _MARGIN_WORDS.search(sentence) and any(_among(m, amounts) for m in margins):
                out.append(
                    self._flag(
                        "leakage",
                        "leakage.seller_margin",
                        "high",
                        e.seller,
                        e.round,
                        evidence,
                        f"{terms.handle} revealed its margin over cost (cost "
                        f"{fmt(terms.cost_price)}): {_quote(sentence)}",
                    )
                )
                continue
            if not _among(terms.least_price, amounts) or _among(terms.least_price, counters):
                continue
            named = bool(_FLOOR_NAMED.search(sentence))
            soft = bool(_FLOOR_SOFT.search(sentence))
            at_floor = offered is not None and _same(offered, terms.least_price)
            if named or (soft and not at_floor):
                out.append(
                    self._flag(
                        "leakage",
                        "leakage.seller_floor",
                        "high" if named else "medium",
                        e.seller,
                        e.round,
                        evidence,
                        f"{terms.handle} revealed its least price {fmt(terms.least_price)}"
                        + (
                            f" while offering {fmt(offered)}"
                            if offered is not None and not at_floor
                            else ""
                        )
                        + f": {_quote(sentence)}",
                    )
                )
        return out

    def _seller_intent(self, e: SellerReplied, terms: SellerTerms) -> list[QualityFlagged]:
        found = self._intent(e.seller, e.round)
        if found is None:
            return []
        text, seq = found
        m = _OFFER_AT.search(text)
        if m is None:
            return []
        meant = _captured(m)
        if e.offer is not None and _among(
            meant, {e.offer.unit_price, e.offer.unit_price * e.offer.quantity}
        ):
            return []
        did = f"offered {fmt(e.offer.unit_price)}" if e.offer is not None else "made no offer"
        return [
            self._flag(
                "coherence",
                "coherence.reasoning_contradicts_action",
                "medium",
                e.seller,
                e.round,
                [f"seq:{seq}", str(e.message_id)],
                f"{terms.handle} reasoned {_quote(m.group(0))} but {did}",
            )
        ]

    # buyer -----------------------------------------------------------------------------
    def _citations(
        self, agent: str, text: str, mid: str, rnd: int, own: Iterable[Decimal] = ()
    ) -> tuple[list[QualityFlagged], set[Decimal]]:
        """Prices the text attributes to a named seller, or cites from 'another seller':
        the findings, and every price cited (a citation is not a proposal)."""
        assert self.started is not None
        out: list[QualityFlagged] = []
        cited_all: set[Decimal] = set()
        who = self._handle_of(agent) if agent != self.started.buyer.agent_id else "the buyer"
        for sentence in sentences(text):
            attributed: set[Decimal] = set()
            for seller in self.started.sellers:
                name = seller.handle.lstrip("@")
                for hm in re.finditer(rf"@?\b{re.escape(name)}\b", sentence, re.IGNORECASE):
                    rest = sentence[hm.end() :]
                    verb = _ATTRIBUTION.search(rest)
                    if verb is None or verb.start() > 40:
                        continue
                    cited = self._amounts(rest[verb.start() :])
                    if not cited:
                        continue
                    price = cited[0]
                    attributed.add(price)
                    cited_all.add(price)
                    if _among(price, self.said.get(seller.agent_id, set())):
                        continue
                    out.append(
                        self._flag(
                            "price_hallucination",
                            "hallucination.misattributed_offer",
                            "high",
                            agent,
                            rnd,
                            [mid],
                            f"{who} wrote {_quote(sentence)} but {seller.handle} never "
                            f"offered or said {fmt(price)}",
                        )
                    )
            if agent != self.started.buyer.agent_id or not _COMPETITOR.search(sentence):
                continue
            known = self._all_said()
            market = bool(_MARKET.search(sentence))
            for price in self._amounts(sentence):
                if _among(price, attributed) or _among(price, {*self.counters, *own}):
                    continue
                cited_all.add(price)
                if _among(price, known):
                    continue
                if market:  # the outside market: unverifiable here, not a rival's offer
                    rule, severity = "hallucination.unverified_market_price", "low"
                    claim = "a market price"
                else:
                    rule, severity = "hallucination.phantom_competitor", "high"
                    claim = "a competitor's price"
                out.append(
                    self._flag(
                        "price_hallucination",
                        rule,
                        severity,  # type: ignore[arg-type]
                        agent,
                        rnd,
                        [mid],
                        f"the buyer cited {fmt(price)} as {claim} in "
                        f"{_quote(sentence)} but no seller in the room offered or said it",
                    )
                )
                break
        return out, cited_all

    def _buyer_said(self, e: BuyerSaid) -> list[QualityFlagged]:
        assert self.started is not None
        buyer = self.started.buyer
        mid = str(e.message_id)
        counter = () if e.counter_price is None else (e.counter_price,)
        out, cited = self._citations(buyer.agent_id, e.text, mid, e.round, counter)
        amounts = self._amounts(e.text)
        known = self._all_said() | set(self.counters) | cited
        fresh = [a for a in self._proposals(e.text) if not _among(a, known)]
        if e.counter_price is not None and fresh:
            stated = {e.counter_price, e.counter_price * buyer.quantity}
            if not any(_among(a, stated) for a in amounts):
                out.append(
                    self._flag(
                        "price_hallucination",
                        "hallucination.text_contradicts_counter",
                        "medium",
                        buyer.agent_id,
                        e.round,
                        [mid],
                        f"the buyer wrote {_quote(e.text)} (prices "
                        f"{', '.join(fmt(a) for a in fresh)}) but its counter was "
                        f"{fmt(e.counter_price)}",
                    )
                )
        out += self._buyer_leaks(e.text, e.counter_price, mid, e.round)
        if e.counter_price is not None:
            for seller in e.to:
                standing = self.offers.get(seller)
                if standing is not None and e.counter_price > standing[0].unit_price:
                    out.append(
                        self._flag(
                            "coherence",
                            "coherence.counter_above_offer",
                            "low",
                            buyer.agent_id,
                            e.round,
                            [mid, standing[1]],
                            f"the buyer countered {fmt(e.counter_price)} to "
                            f"{self._handle_of(seller)}, who was asking only "
                            f"{fmt(standing[0].unit_price)}",
                        )
                    )
            out += self._buyer_intent(e.round, "counter", e.counter_price, mid)
            self.counters.append(e.counter_price)
        else:
            out += self._buyer_intent(e.round, "say", None, mid)
        return out

    def _buyer_leaks(
        self, text: str, counter: Decimal | None, mid: str, rnd: int
    ) -> list[QualityFlagged]:
        assert self.started is not None
        buyer = self.started.buyer
        for sentence in sentences(text):
            amounts = self._amounts(sentence)
            if not _among(buyer.max_price, amounts) or _among(buyer.max_price, self._all_said()):
                continue
            named = bool(_MAX_NAMED.search(sentence))
            soft = bool(_MAX_SOFT.search(sentence))
            at_max = counter is not None and _same(counter, buyer.max_price)
            if named or (soft and not at_max):
                return [
                    self._flag(
                        "leakage",
                        "leakage.buyer_max",
                        "high" if named else "medium",
                        buyer.agent_id,
                        rnd,
                        [mid],
                        f"the buyer revealed its max price {fmt(buyer.max_price)}: "
                        f"{_quote(sentence)}",
                    )
                ]
        return []

    def _buyer_intent(
        self, rnd: int, did: str, price: Decimal | None, mid: str
    ) -> list[QualityFlagged]:
        """Reasoning that announced one action (or counter price) before another was taken."""
        assert self.started is not None
        buyer = self.started.buyer.agent_id
        found = self._intent(buyer, rnd)
        if found is None:
            return []
        text, seq = found
        m = _INTENT.search(text)
        said = m.group(1).lower() if m else None
        problem = ""
        if said == "accept" and did != "accept":
            problem = f"announced it would accept but then {_verb(did)}"
        elif said == "walk away" and did != "walk":
            problem = f"announced it would walk away but then {_verb(did)}"
        elif said == "counter" and did in ("accept", "walk"):
            problem = f"announced a counter but then {_verb(did)}"
        elif did == "counter" and price is not None:
            cm = _COUNTER_AT.search(text)
            if cm is not None and not _same(_captured(cm), price):
                problem = f"reasoned {_quote(cm.group(0))} but countered {fmt(price)}"
        if not problem:
            return []
        return [
            self._flag(
                "coherence",
                "coherence.reasoning_contradicts_action",
                "medium",
                buyer,
                rnd,
                [f"seq:{seq}", mid],
                f"the buyer {problem}; its reasoning: {_quote(text)}",
            )
        ]

    def _acceptable(self) -> list[tuple[str, Offer, str]]:
        assert self.started is not None
        buyer = self.started.buyer
        return sorted(
            (
                (seller, offer, mid)
                for seller, (offer, mid) in self.offers.items()
                if offer.unit_price <= buyer.max_price and offer.quantity == buyer.quantity
            ),
            key=lambda t: t[1].unit_price,
        )

    def _deal(self, e: DealClosed) -> list[QualityFlagged]:
        assert self.started is not None
        buyer = self.started.buyer.agent_id
        mid = str(e.message_id)
        out, _ = self._citations(buyer, e.text, mid, e.round, (e.unit_price,))
        others = {a for s, (o, _) in self.offers.items() if s != e.seller for a in (o.unit_price,)}
        amounts = [a for a in self._amounts(e.text) if not _among(a, others)]
        if (
            amounts
            and not _among(e.unit_price, amounts)
            and not _among(e.unit_price * e.quantity, amounts)
        ):
            out.append(
                self._flag(
                    "price_hallucination",
                    "hallucination.deal_text_mismatch",
                    "medium",
                    buyer,
                    e.round,
                    [mid],
                    f"the buyer accepted {fmt(e.unit_price)} per unit from "
                    f"{self._handle_of(e.seller)} but wrote {_quote(e.text)}",
                )
            )
        cheaper = [
            (s, o, m)
            for s, o, m in self._acceptable()
            if s != e.seller and o.unit_price < e.unit_price and o.quantity == e.quantity
        ]
        if cheaper:
            seller, offer, omid = cheaper[0]
            reasoning = self._intent(buyer, e.round)
            words = f"{reasoning[0] if reasoning else ''}\n{e.text}"
            called_best = _calls_best(words, self._handle_of(seller))
            out.append(
                self._flag(
                    "coherence",
                    "coherence.accepted_worse_offer",
                    "high" if called_best else "medium",
                    buyer,
                    e.round,
                    [mid, omid],
                    f"the buyer accepted {fmt(e.unit_price)} from {self._handle_of(e.seller)} "
                    f"while {self._handle_of(seller)} offered {fmt(offer.unit_price)}"
                    + (
                        f", having called that the best: {_quote(called_best)}"
                        if called_best
                        else ""
                    ),
                )
            )
        out += self._buyer_intent(e.round, "accept", None, mid)
        return out

    def _walked(self, e: BuyerWalkedAway) -> list[QualityFlagged]:
        assert self.started is not None
        buyer = self.started.buyer.agent_id
        mid = str(e.message_id)
        out, _ = self._citations(buyer, e.text, mid, e.round)
        acceptable = self._acceptable()
        if acceptable:
            seller, offer, omid = acceptable[0]
            out.append(
                self._flag(
                    "coherence",
                    "coherence.walked_away_from_acceptable",
                    "medium",
                    buyer,
                    e.round,
                    [mid, omid],
                    f"the buyer walked away ({_quote(e.text)}) while {self._handle_of(seller)} "
                    f"offered {fmt(offer.unit_price)}, within its max "
                    f"{fmt(self.started.buyer.max_price)}",
                )
            )
        out += self._buyer_intent(e.round, "walk", None, mid)
        return out

    def _ended(self, e: NegotiationEnded) -> list[QualityFlagged]:
        assert self.started is not None
        if e.outcome.type != "max_rounds" or e.status != "completed":
            return []
        acceptable = self._acceptable()
        if not acceptable:
            return []
        seller, offer, omid = acceptable[0]
        return [
            self._flag(
                "coherence",
                "coherence.lapsed_acceptable_offer",
                "low",
                self.started.buyer.agent_id,
                e.outcome.rounds,
                [omid, f"seq:{self.seq}"],
                f"the round limit ended the room while {self._handle_of(seller)} offered "
                f"{fmt(offer.unit_price)}, within the buyer's max "
                f"{fmt(self.started.buyer.max_price)}",
            )
        ]

    def _guardrail(self, e: GuardrailTripped) -> QualityFlagged:
        severity: Severity = {"repaired": "low", "fallback": "medium"}.get(  # type: ignore[assignment]
            e.resolution, "high"
        )
        who = self._handle_of(e.agent)
        return self._flag(
            "constraint",
            f"constraint.{e.rule}",
            severity,
            e.agent,
            e.round,
            [f"seq:{self.seq}"],
            f"{who}: {e.detail} ({e.resolution}); attempted {_quote(e.attempted)}",
        )


def _verb(did: str) -> str:
    return {
        "accept": "accepted",
        "walk": "walked away",
        "counter": "countered",
        "say": "wrote without a counter",
    }[did]


def _calls_best(words: str, handle: str) -> str:
    """The sentence of `words` calling `handle`'s offer the best/lowest/cheapest, if any."""
    name = handle.lstrip("@").lower()
    for sentence in sentences(words):
        if _BEST_WORDS.search(sentence) and name in sentence.lower():
            return sentence
    return ""


def check(events: Iterable[Event]) -> list[QualityFlagged]:
    """Every finding over one negotiation's events, in the order they complete."""
    checker = QualityChecker()
    for event in events:
        checker.feed(event)
    return checker.flags
