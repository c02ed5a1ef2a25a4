"""Generate the bundled synthetic sample datasets in data/sample/ (stdlib only, seeded).

    python data/make_samples.py            # rewrite data/sample/*
    python data/make_samples.py --check    # exit 1 if the committed files differ

Everything is synthetic: names, organisations, places and numbers are drawn from small
hand-written pools with a fixed seed, so the output is byte-for-byte reproducible.

- summarization.json: upstream TACO-RL layout {"0": {"original_prompt", "gpt_output"?}, ...};
  80 meeting transcripts, a reference-style summary as ``gpt_output`` on about half.
- qa.jsonl: 40 {"context", "question", "answer"}; the answer is a span of the context.
- code.jsonl: 30 {"code", "summary"}; small Python functions with a one-line summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

SEED = 20240611
OUT = Path(__file__).resolve().parent / "sample"

FIRST = [
    "Maya", "Daniel", "Priya", "Tomasz", "Aisha", "Lucas", "Hannah", "Kenji", "Sofia", "Omar",
    "Grace", "Mateo", "Ingrid", "Samuel", "Leila", "Victor", "Chloe", "Ravi", "Nadia", "Felix",
    "Zoe", "Andre", "Yuki", "Elena", "Marcus", "Fatima", "Oliver", "Beatriz", "Jonas", "Amara",
]  # fmt: skip
LAST = [
    "Okafor", "Lindqvist", "Patel", "Nowak", "Haddad", "Moreau", "Fischer", "Tanaka", "Rossi",
    "Castillo", "Brennan", "Kowalski", "Sato", "Mensah", "Dubois", "Ivanova", "Reyes", "Gupta",
    "Novak", "Larsen", "Chen", "Alvarez", "Baker", "Nakamura", "Osei", "Keller",
]  # fmt: skip
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

# --------------------------------------------------------------------------- meetings

TOPICS = [
    {
        "team": "platform engineering", "meeting": "weekly sync", "project": "the database migration",
        "metric": "p95 query latency", "unit": "milliseconds", "thing": "the replica cluster",
        "risks": ["the vendor contract renewal", "a spike in lock contention", "the on-call rotation gap"],
        "decisions": ["move the cutover to a Saturday night window", "freeze schema changes until the cutover",
                      "keep the old cluster read-only for two weeks"],
        "actions": ["write the rollback runbook", "schedule the load test", "update the capacity forecast"],
    },
    {
        "team": "city parks committee", "meeting": "monthly meeting", "project": "the riverside playground renovation",
        "metric": "the renovation budget", "unit": "thousand dollars", "thing": "the north entrance",
        "risks": ["drainage problems near the path", "a delay in the permit review", "rising steel prices"],
        "decisions": ["approve the revised site plan", "hold a public comment session in the library",
                      "split the work into two phases"],
        "actions": ["send the plan to the permit office", "book the library meeting room", "collect three contractor quotes"],
    },
    {
        "team": "marketing", "meeting": "campaign review", "project": "the spring product launch",
        "metric": "the email open rate", "unit": "percent", "thing": "the landing page",
        "risks": ["a competing launch in the same week", "slow legal review of the copy", "a shortage of product photos"],
        "decisions": ["shift budget from print to video ads", "launch in two regions first",
                      "drop the referral discount"],
        "actions": ["draft the press release", "brief the regional sales leads", "set up the A/B test"],
    },
    {
        "team": "clinical operations", "meeting": "staff huddle", "project": "the new patient intake process",
        "metric": "average waiting time", "unit": "minutes", "thing": "the triage desk",
        "risks": ["weekend staffing shortages", "the scheduling software outage last week", "missing consent forms"],
        "decisions": ["add a second nurse to the triage desk on Mondays", "pilot digital check-in kiosks",
                      "review the intake form with the compliance office"],
        "actions": ["update the staffing rota", "order two kiosks for the pilot", "retrain the front desk team"],
    },
    {
        "team": "school board", "meeting": "budget workshop", "project": "next year's transport plan",
        "metric": "the bus fleet cost", "unit": "thousand dollars", "thing": "route 14",
        "risks": ["fuel price increases", "a driver shortage", "ageing buses on the east routes"],
        "decisions": ["merge routes 14 and 16", "lease four electric buses", "publish the draft plan for parents"],
        "actions": ["model the merged route timings", "request lease terms from two suppliers", "prepare the parent FAQ"],
    },
    {
        "team": "product design", "meeting": "design critique", "project": "the mobile checkout redesign",
        "metric": "checkout completion", "unit": "percent", "thing": "the payment screen",
        "risks": ["accessibility gaps in the colour palette", "inconsistent button labels", "late engineering feedback"],
        "decisions": ["adopt the single-page checkout", "keep guest checkout as the default",
                      "run a usability study before handoff"],
        "actions": ["fix the contrast issues", "recruit eight study participants", "write the handoff notes"],
    },
    {
        "team": "finance", "meeting": "quarter-end review", "project": "the quarterly close",
        "metric": "operating expenses", "unit": "thousand dollars", "thing": "the travel budget",
        "risks": ["late invoices from two suppliers", "a currency swing on the euro accounts", "an audit request"],
        "decisions": ["cap travel spending for the rest of the quarter", "accrue the consulting fees now",
                      "move the close deadline by two days"],
        "actions": ["chase the outstanding invoices", "reconcile the euro accounts", "prepare the audit binder"],
    },
    {
        "team": "customer support", "meeting": "operations review", "project": "the help centre overhaul",
        "metric": "first response time", "unit": "minutes", "thing": "the chat queue",
        "risks": ["a backlog from the billing incident", "two agents leaving next month", "outdated macros"],
        "decisions": ["route billing tickets to a dedicated queue", "retire the old FAQ pages",
                      "extend chat hours until 9 pm"],
        "actions": ["rewrite the top twenty macros", "post the two job openings", "publish the new FAQ"],
    },
    {
        "team": "research lab", "meeting": "group meeting", "project": "the soil sensor study",
        "metric": "sensor uptime", "unit": "percent", "thing": "the field station",
        "risks": ["battery failures in cold weather", "a delayed shipment of probes", "the grant report deadline"],
        "decisions": ["switch to lithium batteries", "drop the third field site", "submit the interim report early"],
        "actions": ["order replacement batteries", "clean the calibration data", "draft the interim report"],
    },
    {
        "team": "warehouse operations", "meeting": "shift handover", "project": "the new picking layout",
        "metric": "orders picked per hour", "unit": "orders", "thing": "aisle 7",
        "risks": ["a broken conveyor motor", "holiday peak volumes", "mislabelled bins"],
        "decisions": ["move fast sellers closer to packing", "add an evening shift in December",
                      "relabel every bin in aisle 7"],
        "actions": ["call the conveyor technician", "post the evening shift schedule", "print the new labels"],
    },
    {
        "team": "housing association", "meeting": "residents' meeting", "project": "the roof repair programme",
        "metric": "the repair fund", "unit": "thousand dollars", "thing": "block C",
        "risks": ["water damage in two flats", "scaffolding permits", "a contractor dispute"],
        "decisions": ["start with block C", "raise the service charge by two percent", "hire an independent surveyor"],
        "actions": ["notify block C residents", "apply for the scaffolding permit", "get the surveyor's quote"],
    },
    {
        "team": "data science", "meeting": "model review", "project": "the churn prediction model",
        "metric": "recall on the holdout set", "unit": "percent", "thing": "the feature pipeline",
        "risks": ["label leakage in the usage features", "a stale training snapshot", "drift in the trial cohort"],
        "decisions": ["retrain on the last six months only", "remove the leaky usage feature",
                      "ship the model behind a feature flag"],
        "actions": ["rebuild the training snapshot", "write the model card", "set up the drift dashboard"],
    },
    {
        "team": "festival organising", "meeting": "planning meeting", "project": "the summer music festival",
        "metric": "ticket sales", "unit": "tickets", "thing": "the main stage",
        "risks": ["a forecast of heavy rain", "a headliner cancellation", "too few volunteers"],
        "decisions": ["rent a covered stage", "open volunteer sign-ups to students", "add a Sunday matinee"],
        "actions": ["sign the stage rental", "email the student union", "update the ticketing page"],
    },
    {
        "team": "legal and compliance", "meeting": "policy review", "project": "the data retention policy",
        "metric": "open compliance findings", "unit": "findings", "thing": "the archive system",
        "risks": ["an upcoming regulator visit", "unclear ownership of old backups", "gaps in staff training"],
        "decisions": ["shorten log retention to ninety days", "assign backup ownership to IT",
                      "make the training mandatory"],
        "actions": ["update the policy document", "inventory the old backups", "schedule the training sessions"],
    },
    {
        "team": "mobile app", "meeting": "sprint planning", "project": "the offline mode feature",
        "metric": "crash-free sessions", "unit": "percent", "thing": "the sync service",
        "risks": ["conflicts when two devices edit offline", "the app store review time", "flaky UI tests"],
        "decisions": ["use last-write-wins for notes", "cut the sprint scope to sync only", "quarantine the flaky tests"],
        "actions": ["write the conflict tests", "submit the beta build", "fix the login crash"],
    },
    {
        "team": "library services", "meeting": "branch managers' meeting", "project": "the extended opening hours trial",
        "metric": "evening visitors", "unit": "visitors", "thing": "the west branch",
        "risks": ["security cover after 8 pm", "heating costs", "low awareness of the new hours"],
        "decisions": ["keep the trial at two branches", "add a security guard on Thursdays",
                      "promote the hours on local radio"],
        "actions": ["count evening visitors weekly", "contact the security firm", "draft the radio announcement"],
    },
]  # fmt: skip

OPENERS = [
    "Good morning, everyone. Let's get started with the {meeting} for the {team} team. Today we need to cover {project}.",
    "Thanks for joining. This is the {team} {meeting}, and the main item is {project}.",
    "Okay, I think we have quorum. Welcome to the {meeting}. First on the agenda is {project}.",
    "Hi all, let's begin. We have about thirty minutes, and most of it should go to {project}.",
]
STATUS = [
    "Quick update: {metric} is now {v1} {unit}, {trend}.",
    "The latest numbers show {metric} at {v1} {unit}, compared with {v0} {unit} at the start of {month}.",
    "Since the last meeting, {metric} went from {v0} to {v1} {unit}. That's roughly what we expected.",
    "We are at {v1} {unit} for {metric}. The target we agreed on was {target} {unit}.",
]
CONCERNS = [
    "My main concern is {risk}. If we ignore it, {thing} could slip by {weeks} weeks.",
    "One thing worries me, and that's {risk}. It already cost us {days} days in {month}.",
    "I want to flag {risk}. I spoke to {other} about it on {weekday} and we both think it's real.",
    "There's a risk we haven't discussed: {risk}. It mostly affects {thing}.",
]
RESPONSES = [
    "Agreed. Could we handle that by giving it to a small group of {n} people?",
    "I'm less worried about that. We saw the same thing last year and it resolved within a week.",
    "That's fair. I'd rather fix it now than explain a delay to the steering group in {month}.",
    "Good point. Do we have numbers on how often that happens?",
    "We could, but it would push {thing} back at least {days} days.",
]
DATA_POINTS = [
    "Roughly {pct} percent of the cases last month were related to it.",
    "It happened {n} times in the last {weeks} weeks.",
    "The estimate is about {cost} thousand dollars if we do nothing.",
]
DECIDE = [
    "So the decision is to {decision}. Any objections? No? Then that's agreed.",
    "Let's go with that: we will {decision}. I'll note it in the minutes.",
    "Okay, we're agreed to {decision}, and we'll review it on {date}.",
    "Then we'll {decision}. {other} will confirm with the {stake} by {weekday}.",
]
ACTION = [
    "{who} will {action} by {date}.",
    "{who}, can you {action} before {date}?",
    "Action item for {who}: {action}, due {date}.",
]
CLOSERS = [
    "Great. Our next meeting is on {date}. Thanks, everyone.",
    "That's everything on the agenda. Thank you all, see you on {date}.",
    "Let's stop there. I'll send the minutes by {weekday}.",
    "Thanks, that was productive. Same time on {next_weekday}, {date}.",
]
FOLLOW_UPS = [
    ("Is that trend stable?", "Mostly, yes."),
    ("What's driving it?", "Partly seasonal, partly the changes we made."),
    ("Is that in line with the forecast?", "Close to it."),
    ("Good to hear. Anything unusual in the data?", "Not really."),
]
STAKEHOLDERS = [
    "steering group",
    "finance office",
    "vendor",
    "board",
    "project sponsor",
    "union rep",
]


def _people(rng: random.Random, n: int) -> list[str]:
    firsts = rng.sample(FIRST, n)
    lasts = rng.sample(LAST, n)
    return [f"{f} {ln}" for f, ln in zip(firsts, lasts, strict=True)]


def _fmt(d: datetime.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def _meeting(rng: random.Random, idx: int) -> tuple[str, str]:
    topic = TOPICS[idx % len(TOPICS)]
    day = datetime.date(rng.choice([2022, 2023, 2024]), rng.randint(1, 12), rng.randint(1, 28))
    while day.weekday() > 4:  # meetings happen on weekdays
        day += datetime.timedelta(days=1)
    date = _fmt(day)
    people = _people(rng, rng.randint(3, 5))
    chair, reporter = people[0], people[1]
    short = {p: p.split()[0] for p in people}
    if topic["unit"] == "percent":
        v0 = rng.randint(40, 92)
        v1 = min(99, max(5, v0 + rng.randint(-12, 7)))
    else:
        v0 = rng.randint(20, 400)
        v1 = max(1, v0 + rng.randint(-v0 // 3, v0 // 4))
    trend = "up" if v1 > v0 else "down" if v1 < v0 else "unchanged"
    slots = dict(
        team=topic["team"], meeting=topic["meeting"], project=topic["project"], metric=topic["metric"],
        unit=topic["unit"], thing=topic["thing"], v0=v0, v1=v1, target=max(1, v0 - rng.randint(1, 15)),
        month=MONTHS[(day.month - 2) % 12], weeks=rng.randint(2, 6), days=rng.randint(3, 12),
        n=rng.randint(2, 9), pct=rng.randint(5, 60), cost=rng.randint(8, 250),
        weekday=WEEKDAYS[rng.randrange(5)], stake=rng.choice(STAKEHOLDERS),
        trend=f"{trend} from {v0} {topic['unit']}" if trend != "unchanged" else "the same as last month",
    )  # fmt: skip
    risk, decision = rng.choice(topic["risks"]), rng.choice(topic["decisions"])
    actions = rng.sample(topic["actions"], rng.randint(1, 3))
    owners = [rng.choice(people[1:]) for _ in actions]
    due = [_fmt(day + datetime.timedelta(days=rng.randint(3, 30))) for _ in actions]
    nxt_day = day + datetime.timedelta(days=rng.choice([7, 14, 28]))
    nxt = _fmt(nxt_day)

    def say(who: str, template: str, **extra: object) -> str:
        others = [short[p] for p in people if p not in (who, chair)] or [short[chair]]
        text = template.format(**{**slots, "other": rng.choice(others), **extra})
        return f"{who}: {text[0].upper()}{text[1:]}"

    turns = [
        f"{topic['team'].capitalize()}, {topic['meeting']}, {WEEKDAYS[day.weekday()]} {date}.",
        say(chair, rng.choice(OPENERS)),
        say(reporter, rng.choice(STATUS)),
    ]
    if rng.random() < 0.6:
        question, answer = rng.choice(FOLLOW_UPS)
        turns.append(say(chair, f"Thanks, {short[reporter]}. {question}"))
        turns.append(say(reporter, answer + " " + rng.choice(DATA_POINTS)))
    worrier = rng.choice(people[1:])
    turns.append(say(worrier, rng.choice(CONCERNS), risk=risk))
    turns.append(say(rng.choice([p for p in people if p != worrier]), rng.choice(RESPONSES)))
    if rng.random() < 0.5:
        turns.append(say(worrier, rng.choice(DATA_POINTS)))
    turns.append(say(chair, rng.choice(DECIDE), decision=decision, date=nxt))
    acts = " ".join(
        rng.choice(ACTION).format(who=short[o], action=a, date=d)
        for o, a, d in zip(owners, actions, due, strict=True)
    )
    turns.append(f"{chair}: Action items. {acts}")
    if rng.random() < 0.5:
        turns.append(say(owners[0], rng.choice(["Got it.", "Will do.", "That works for me.", "Noted, thanks."])))  # fmt: skip
    turns.append(
        say(chair, rng.choice(CLOSERS), date=nxt, next_weekday=WEEKDAYS[nxt_day.weekday()])
    )
    transcript = "\n".join(turns)

    summary = (
        f"On {date}, the {topic['team']} {topic['meeting']}, chaired by {chair}, discussed {topic['project']}. "
        f"{reporter} reported {topic['metric']} at {v1} {topic['unit']} ({slots['trend']}). "
        f"{worrier} raised {risk}. The group decided to {decision}. "
        + " ".join(f"{o} will {a} by {d}." for o, a, d in zip(owners, actions, due, strict=True))
        + f" The next meeting is on {nxt}."
    )
    return transcript, summary


def summarization(rng: random.Random, n: int = 80) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    order = list(range(n))
    rng.shuffle(order)
    for i in range(n):
        for _ in range(50):  # redraw until the transcript is within 120-250 words
            transcript, summary = _meeting(rng, order[i])
            if 120 <= len(transcript.split()) <= 250:
                break
        else:
            raise RuntimeError("could not draw a transcript of the right length")
        row: dict[str, str] = {"original_prompt": transcript}
        if i % 2 == 0:
            row["gpt_output"] = summary
        out[str(i)] = row
    return out


# --------------------------------------------------------------------------- QA

PLACES = ["Eastmere", "Corran", "Valdby", "Pellworth", "Saltash Cove", "Ravensholm", "Tirlan", "Brookvale",
          "Oskarby", "Hollin Ridge", "Marrowick", "Stennet"]  # fmt: skip


def _qa_railway(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    a, b = rng.sample(PLACES, 2)
    name = f"{rng.choice(['Harlow', 'Kestrel', 'Brann', 'Ulver', 'Copse'])} Valley Railway"
    year, km, eng = rng.randint(1850, 1910), rng.randint(12, 140), " ".join(_people(rng, 1))
    closed = year + rng.randint(40, 90)
    ctx = (
        f"The {name} opened in {year} and ran {km} kilometres between {a} and {b}. It was built by the "
        f"engineer {eng}, who insisted on gentle gradients so that coal trains could climb without a second "
        f"locomotive. Passenger traffic peaked in the 1920s, when the line carried timber, wool and mail. "
        f"The railway closed in {closed}, and part of the old trackbed is now a cycling path."
    )
    return ctx, [
        (f"Who built the {name}?", eng),
        (f"In what year did the {name} open?", str(year)),
        (f"How long was the {name}?", f"{km} kilometres"),
        (f"When did the {name} close?", str(closed)),
    ]


def _qa_company(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    name = f"{rng.choice(['Norvik', 'Alder', 'Quill', 'Sable', 'Tessel', 'Orrin'])} {rng.choice(['Instruments', 'Textiles', 'Foods', 'Robotics', 'Paper Co.'])}"
    city, founder = rng.choice(PLACES), " ".join(_people(rng, 1))
    year, staff = rng.randint(1920, 2015), rng.randint(40, 9000)
    product = rng.choice(
        ["precision scales", "wool blankets", "canned fish", "warehouse robots", "recycled card"]
    )
    ctx = (
        f"{name} is a manufacturer based in {city}. It was founded in {year} by {founder}, who started the "
        f"business in a rented workshop. Today the company employs about {staff} people and is best known "
        f"for its {product}, which are exported to more than twenty countries."
    )
    return ctx, [
        (f"Who founded {name}?", founder),
        (f"Where is {name} based?", city),
        (f"What is {name} best known for?", product),
        (f"How many people does {name} employ?", f"about {staff} people"),
    ]


def _qa_species(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    animal = rng.choice(["frog", "beetle", "warbler", "shrew", "orchid", "salamander"])
    name = f"{rng.choice(['pale', 'spotted', 'mountain', 'lesser', 'golden'])} {rng.choice(PLACES).split()[0].lower()} {animal}"
    disc, who = rng.randint(1880, 2019), " ".join(_people(rng, 1))
    habitat = rng.choice(
        ["cloud forest", "limestone caves", "coastal marshes", "alpine meadows", "peat bogs"]
    )
    size = rng.randint(2, 30)
    ctx = (
        f"The {name} is found only in {habitat}. It was first described in {disc} by the naturalist {who}. "
        f"Adults measure around {size} centimetres, and the species is most active at dusk. Surveys suggest "
        f"that its numbers are falling because of drainage and road building."
    )
    return ctx, [
        (f"Where is the {name} found?", habitat),
        (f"Who first described the {name}?", who),
        (f"When was the {name} first described?", str(disc)),
        (f"How large are adult {name}s?", f"around {size} centimetres"),
    ]


def _qa_festival(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    town = rng.choice(PLACES)
    kind = rng.choice(["lantern", "folk music", "harvest", "kite", "film", "bread"])
    month, visitors = rng.choice(MONTHS), rng.randint(2, 90) * 1000
    first = rng.randint(1950, 2012)
    ctx = (
        f"The {town} {kind} festival takes place every {month}. It was first held in {first} as a small "
        f"gathering in the market square. The festival now attracts about {visitors} visitors, and the "
        f"closing parade is organised by local schools."
    )
    return ctx, [
        (f"In which month is the {town} {kind} festival held?", month),
        (f"When was the {town} {kind} festival first held?", str(first)),
        (
            f"How many visitors does the {town} {kind} festival attract?",
            f"about {visitors} visitors",
        ),
        (f"Who organises the closing parade of the {town} {kind} festival?", "local schools"),
    ]


def _qa_bridge(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    river = f"River {rng.choice(['Lenn', 'Ashby', 'Colde', 'Myre', 'Tavish'])}"
    town = rng.choice(PLACES)
    year, length = rng.randint(1780, 1990), rng.randint(60, 900)
    material = rng.choice(["sandstone", "cast iron", "reinforced concrete", "timber", "steel"])
    architect = " ".join(_people(rng, 1))
    ctx = (
        f"The {town} Bridge crosses the {river} and is {length} metres long. Completed in {year}, it was "
        f"designed by {architect} and built of {material}. It replaced a ferry that had operated at the same "
        f"spot for more than a century, and it was restored after floods damaged its piers."
    )
    return ctx, [
        (f"What river does the {town} Bridge cross?", f"the {river}"),
        (f"Who designed the {town} Bridge?", architect),
        (f"What is the {town} Bridge built of?", material),
        (f"How long is the {town} Bridge?", f"{length} metres"),
    ]


def qa(rng: random.Random, n: int = 40) -> list[dict[str, str]]:
    makers = [_qa_railway, _qa_company, _qa_species, _qa_festival, _qa_bridge]
    rows = []
    for i in range(n):
        ctx, pairs = makers[i % len(makers)](rng)
        question, answer = rng.choice(pairs)
        assert answer in ctx, (answer, ctx)
        rows.append({"context": ctx, "question": question, "answer": answer})
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- code

FUNCTIONS: list[tuple[str, str]] = [
    ("def clamp(value, low, high):\n    if low > high:\n        raise ValueError(\"low must not exceed high\")\n    return max(low, min(value, high))\n",
     "Limit a value to the closed range [low, high]."),
    ("def chunked(items, size):\n    if size <= 0:\n        raise ValueError(\"size must be positive\")\n    return [items[i:i + size] for i in range(0, len(items), size)]\n",
     "Split a list into consecutive chunks of at most size items."),
    ("def word_counts(text):\n    counts = {}\n    for word in text.lower().split():\n        word = word.strip(\".,;:!?\\\"'\")\n        if word:\n            counts[word] = counts.get(word, 0) + 1\n    return counts\n",
     "Count case-insensitive word occurrences in a text, ignoring punctuation."),
    ("def is_palindrome(s):\n    cleaned = [c.lower() for c in s if c.isalnum()]\n    return cleaned == cleaned[::-1]\n",
     "Check whether a string reads the same backwards, ignoring case and punctuation."),
    ("def flatten(nested):\n    out = []\n    for item in nested:\n        if isinstance(item, (list, tuple)):\n            out.extend(flatten(item))\n        else:\n            out.append(item)\n    return out\n",
     "Recursively flatten nested lists and tuples into one list."),
    ("def moving_average(values, window):\n    if window < 1:\n        raise ValueError(\"window must be at least 1\")\n    result = []\n    total = 0.0\n    for i, v in enumerate(values):\n        total += v\n        if i >= window:\n            total -= values[i - window]\n        if i >= window - 1:\n            result.append(total / window)\n    return result\n",
     "Compute the simple moving average of a sequence over a fixed window."),
    ("def celsius_to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32\n",
     "Convert a temperature from degrees Celsius to Fahrenheit."),
    ("def merge_dicts(*dicts):\n    merged = {}\n    for d in dicts:\n        merged.update(d)\n    return merged\n",
     "Merge several dictionaries, later ones overriding earlier keys."),
    ("def unique_in_order(items):\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out\n",
     "Remove duplicates from a sequence while keeping the first occurrence order."),
    ("def parse_key_values(line, sep=\";\"):\n    pairs = {}\n    for part in line.split(sep):\n        if \"=\" in part:\n            key, _, value = part.partition(\"=\")\n            pairs[key.strip()] = value.strip()\n    return pairs\n",
     "Parse a 'key=value' list separated by semicolons into a dictionary."),
    ("def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return abs(a)\n",
     "Return the greatest common divisor of two integers using Euclid's algorithm."),
    ("def fibonacci(n):\n    a, b = 0, 1\n    seq = []\n    for _ in range(n):\n        seq.append(a)\n        a, b = b, a + b\n    return seq\n",
     "Return the first n Fibonacci numbers."),
    ("def binary_search(sorted_items, target):\n    lo, hi = 0, len(sorted_items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if sorted_items[mid] == target:\n            return mid\n        if sorted_items[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1\n",
     "Find the index of a target in a sorted list, or -1 if absent."),
    ("import re\n\n\ndef slugify(title):\n    slug = re.sub(r\"[^a-z0-9]+\", \"-\", title.lower())\n    return slug.strip(\"-\")\n",
     "Turn a title into a lowercase URL slug with hyphens."),
    ("def transpose(matrix):\n    if not matrix:\n        return []\n    return [list(row) for row in zip(*matrix)]\n",
     "Transpose a rectangular matrix given as a list of rows."),
    ("def read_lines(path):\n    with open(path, encoding=\"utf-8\") as fh:\n        return [line.rstrip(\"\\n\") for line in fh if line.strip()]\n",
     "Read the non-blank lines of a UTF-8 text file without trailing newlines."),
    ("def percent_change(old, new):\n    if old == 0:\n        return None\n    return (new - old) / old * 100\n",
     "Compute the percentage change from an old value to a new one."),
    ("def group_by(items, key):\n    groups = {}\n    for item in items:\n        groups.setdefault(key(item), []).append(item)\n    return groups\n",
     "Group items into a dictionary of lists keyed by a function."),
    ("def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True\n",
     "Test whether an integer is prime by trial division."),
    ("def rotate_left(items, k):\n    if not items:\n        return items\n    k %= len(items)\n    return items[k:] + items[:k]\n",
     "Rotate a list to the left by k positions."),
    ("def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")\n",
     "Count the vowels in a string."),
    ("def median(values):\n    ordered = sorted(values)\n    n = len(ordered)\n    if n == 0:\n        raise ValueError(\"median of empty data\")\n    mid = n // 2\n    if n % 2:\n        return ordered[mid]\n    return (ordered[mid - 1] + ordered[mid]) / 2\n",
     "Return the median of a non-empty list of numbers."),
    ("def truncate(text, limit, suffix=\"...\"):\n    if len(text) <= limit:\n        return text\n    return text[: max(0, limit - len(suffix))] + suffix\n",
     "Shorten a string to a length limit, adding a suffix when cut."),
    ("def invert_dict(mapping):\n    inverted = {}\n    for key, value in mapping.items():\n        if value in inverted:\n            raise ValueError(f\"duplicate value: {value!r}\")\n        inverted[value] = key\n    return inverted\n",
     "Swap keys and values of a dictionary, rejecting duplicate values."),
    ("def running_max(values):\n    out = []\n    best = None\n    for v in values:\n        best = v if best is None or v > best else best\n        out.append(best)\n    return out\n",
     "Return the running maximum of a sequence."),
    ("def seconds_to_hms(total):\n    hours, rest = divmod(int(total), 3600)\n    minutes, seconds = divmod(rest, 60)\n    return f\"{hours:02d}:{minutes:02d}:{seconds:02d}\"\n",
     "Format a number of seconds as an HH:MM:SS string."),
    ("def dot(a, b):\n    if len(a) != len(b):\n        raise ValueError(\"vectors differ in length\")\n    return sum(x * y for x, y in zip(a, b))\n",
     "Compute the dot product of two equal-length vectors."),
    ("def safe_int(text, default=0):\n    try:\n        return int(text)\n    except (TypeError, ValueError):\n        return default\n",
     "Convert a value to int, returning a default when conversion fails."),
    ("def histogram(values, bins, low, high):\n    counts = [0] * bins\n    width = (high - low) / bins\n    for v in values:\n        if low <= v < high:\n            counts[int((v - low) // width)] += 1\n    return counts\n",
     "Count values into equal-width bins between low and high."),
    ("def camel_to_snake(name):\n    out = []\n    for i, ch in enumerate(name):\n        if ch.isupper() and i > 0:\n            out.append(\"_\")\n        out.append(ch.lower())\n    return \"\".join(out)\n",
     "Convert a CamelCase identifier to snake_case."),
]  # fmt: skip


def code(rng: random.Random) -> list[dict[str, str]]:
    rows = [{"code": c, "summary": s} for c, s in FUNCTIONS]
    for r in rows:
        compile(r["code"], "<sample>", "exec")  # every sample must be valid Python
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- main


def render() -> dict[str, str]:
    """File name -> exact content."""
    rng = random.Random(SEED)
    summ = summarization(random.Random(rng.randrange(2**32)))
    qa_rows = qa(random.Random(rng.randrange(2**32)))
    code_rows = code(random.Random(rng.randrange(2**32)))

    def jsonl(rows: list[dict[str, str]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    return {
        "summarization.json": json.dumps(summ, ensure_ascii=False, indent=1) + "\n",
        "qa.jsonl": jsonl(qa_rows),
        "code.jsonl": jsonl(code_rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed files differ")
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: data/sample)")
    args = ap.parse_args(argv)
    files = render()
    if args.check:
        stale = [
            n
            for n, c in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_text(encoding="utf-8") != c
        ]
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run python data/make_samples.py", file=sys.stderr
            )
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, c in files.items():
        (args.out / n).write_text(c, encoding="utf-8", newline="\n")
        print(f"wrote {args.out / n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
