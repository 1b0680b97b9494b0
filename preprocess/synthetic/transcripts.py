"""Synthetic post-match press-conference transcripts whose wording leans with the result.

A transcript is a few questions and answers. Each answer sentence is drawn from
one of five pools:

- ``upbeat``: pleased with one's own play ("I served really well today");
- ``downbeat``: unhappy with it ("I made too many unforced errors");
- ``gracious``: praise for the opponent, positives to take — the polite
  masking that losers use a lot and winners use too;
- ``modest``: a winner playing it down ("honestly it wasn't my best tennis");
- ``neutral``: conditions, schedule, coach, crowd.

A per-video *mood* (normal, its mean shifted by the label) sets the odds of
``upbeat`` against ``downbeat``; a share of losers mask (their mood is drawn as
a winner's and they lean on ``gracious``), and winners are often ``modest``.
So words lean with the label but often mislead; how far a bag-of-words
classifier gets is measured in ``tests/test_synth.py`` (see ``preprocess.synthetic.motion``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

OPPONENTS = (
    "Almeida", "Berg", "Castell", "Dumont", "Eriksen", "Fadel", "Gruber", "Hollis",
    "Ivanov", "Jansen", "Kowal", "Laurent", "Moreau", "Novak", "Okafor", "Petrov",
    "Quint", "Rossi", "Santos", "Tanaka", "Ulrich", "Varga", "Weber", "Yilmaz",
)  # fmt: skip
TOURNAMENTS = ("Melbourne", "Paris", "London", "New York", "Rome", "Madrid", "Miami", "Doha")
SETS = ("first", "second", "third", "fourth", "fifth")

QUESTIONS = (
    "How would you assess your performance today?",
    "What was the turning point in the {nth} set?",
    "How is your body feeling after that match?",
    "What are your plans for the next few weeks?",
    "What did you make of the conditions out there?",
    "Can you talk us through {opp}'s game today?",
    "How important was the serve in that match?",
    "What did you say to your coach after the {nth} set?",
    "How do you look back on your time here in {city}?",
    "Were you surprised by anything {opp} did?",
)

POOLS: dict[str, tuple[str, ...]] = {
    "upbeat": (
        "I served really well today.",
        "I'm very happy with the way I played.",
        "Everything clicked for me in the {nth} set.",
        "I felt great on the court from the first point.",
        "I'm looking forward to the next round.",
        "It's a great feeling, I played my best tennis when it mattered.",
        "My forehand was working and I stayed aggressive.",
        "I was confident the whole match.",
        "I'm really pleased, the work with my team is paying off.",
        "I'm excited about how I'm hitting the ball right now.",
        "I controlled the rallies and made very few mistakes.",
        "I think I showed a high level today and I'm happy about it.",
    ),
    "downbeat": (
        "I couldn't find my rhythm today.",
        "I made too many unforced errors.",
        "It's tough to take right now.",
        "I'm disappointed with how I finished the match.",
        "My serve let me down in the important moments.",
        "I had my chances in the {nth} set but I didn't take them.",
        "I need to go back and work on a lot of things.",
        "I felt slow and a bit flat out there.",
        "It hurts, I expected more from myself this week.",
        "I wasn't able to handle the big points.",
        "I lost my concentration after the break in the {nth} set.",
        "Physically I was struggling towards the end.",
    ),
    "gracious": (
        "Credit to {opp}, {pron} played a great match.",
        "{opp} deserved it today.",
        "There are a lot of positives to take from this week.",
        "I'm proud of how I fought until the last point.",
        "It was a good level of tennis from both of us.",
        "Overall I'm happy with my season so far.",
        "{opp} is a great player and a good friend.",
        "I gave everything I had and I can't ask for more.",
        "Both of us played some great points in the {nth} set.",
        "I'll take the good things from this match and move on.",
    ),
    "modest": (
        "Honestly it wasn't my best tennis today.",
        "I was a bit lucky in a few moments.",
        "I struggled with my serve at the start.",
        "To be honest I'm a little tired.",
        "It wasn't pretty, but I'll take it.",
        "{opp} made it really difficult for me.",
        "I was nervous in the {nth} set, I didn't feel great.",
        "There is a lot I need to improve before the next match.",
    ),
    "neutral": (
        "The conditions were quite windy today.",
        "The balls felt heavy in the evening session.",
        "We'll see about the schedule for the next days.",
        "I spoke with my coach about the tactics before the match.",
        "The crowd here in {city} is always amazing.",
        "I've known {opp} since we were juniors.",
        "The court was playing a bit slower than last year.",
        "I'll do some recovery and practice tomorrow.",
        "We have a long season ahead of us.",
        "The night sessions here are always special.",
        "It was hot, so you have to manage your energy.",
        "I try to focus on one match at a time.",
    ),
}


@dataclasses.dataclass(frozen=True)
class TranscriptStyle:
    """How the synthetic transcripts lean; defaults give the documented difficulty."""

    mood_shift: float = 1.3  # mean mood: +shift for wins, -shift for losses (sd 1)
    masking_rate: float = 0.3  # share of losers who speak like winners
    upbeat_downbeat_rate: float = 0.4  # per sentence, before the mood split
    gracious_rate: float = 0.12  # per sentence, doubled for masking losers
    modest_rate: float = 0.08  # per sentence, winners only


def _fill(template: str, rng: np.random.Generator, slots: dict[str, str]) -> str:
    return template.format(nth=SETS[int(rng.integers(len(SETS)))], **slots)


def make_transcript(
    rng: np.random.Generator,
    label: int,
    *,
    verbosity: float = 1.0,
    gender: str = "M",
    style: TranscriptStyle | None = None,
) -> str:
    """One interview: ``Q:``/``A:`` lines; ``label`` 1 win, 0 lose.

    ``verbosity`` (about 0.5–1.5) scales how many sentences each answer has;
    ``gender`` (``M``/``F``) is the player's, and so the opponent's.
    """
    style = style or TranscriptStyle()
    masking = label == 0 and rng.random() < style.masking_rate
    shift = style.mood_shift if (label == 1 or masking) else -style.mood_shift
    mood = rng.normal(shift, 1.0)
    p_up = style.upbeat_downbeat_rate / (1.0 + np.exp(-1.5 * mood))
    p_down = style.upbeat_downbeat_rate - p_up
    p_gracious = style.gracious_rate * (2.0 if masking else 1.0)
    p_modest = style.modest_rate if label == 1 else 0.0
    pools = ("upbeat", "downbeat", "gracious", "modest", "neutral")
    probs = np.array([p_up, p_down, p_gracious, p_modest, 0.0])
    probs[-1] = 1.0 - probs.sum()
    slots = {
        "opp": OPPONENTS[int(rng.integers(len(OPPONENTS)))],
        "city": TOURNAMENTS[int(rng.integers(len(TOURNAMENTS)))],
        "pron": "she" if gender == "F" else "he",
    }
    questions = rng.permutation(len(QUESTIONS))[: int(rng.integers(3, 7))]
    # Each pool is dealt like a shuffled deck, so a sentence repeats only once its pool is spent.
    decks = {name: [] for name in pools}
    lines = []
    for q in questions:
        lines.append("Q: " + _fill(QUESTIONS[q], rng, slots))
        n = max(1, int(round(rng.uniform(1.0, 3.5) * verbosity)))
        sentences = []
        for pool in rng.choice(len(pools), size=n, p=probs):
            deck = decks[pools[pool]]
            if not deck:
                deck.extend(rng.permutation(len(POOLS[pools[pool]])).tolist())
            sentences.append(_fill(POOLS[pools[pool]][deck.pop()], rng, slots))
        lines.append("A: " + " ".join(sentences))
    return "\n".join(lines) + "\n"
