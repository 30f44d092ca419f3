"""The project's own general-text corpus: generated English documents for the "web" share of a pretraining mix.

Why generated: the tiny recipe must run from a fresh clone with nothing downloaded, and a pretraining mixture
needs plain prose beside the task text (it shapes the tokenizer's merges and keeps the model a language model,
not an arithmetic-only one). This is that prose, from seeded templates: six kinds of document (stories,
encyclopedia entries, how-to steps, letters, dialogues, weather reports) over a vocabulary of a few hundred
everyday words, with real sentence structure, punctuation, paragraphs and some numbers. It carries no knowledge
worth learning; a real run names real web text instead (a text or jsonl source).

Recipe: `{name: web, type: generator, generator: web, kwargs: {n: 3000, seed: 0}}` (pretrain/generators.py).
The same (n, seed) gives the same documents on any machine; a larger n extends the list rather than changing it.
"""

from __future__ import annotations

import random

NAMES = ("Ada", "Ben", "Clara", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Leo",
         "Maya", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yusuf", "Zoe", "Omar")
RELATIVES = ("sister", "brother", "aunt", "uncle", "cousin", "friend", "neighbour", "grandmother", "teacher")
PLACES = ("market", "library", "harbour", "old mill", "station", "garden", "bakery", "museum", "forest", "river",
          "school", "square", "bridge", "farm", "hill above the town", "beach", "workshop", "post office")
TOWNS = ("Greenfield", "Stonebridge", "Northwood", "Ashford", "Millbrook", "Riverton", "Oakdale", "Westport",
         "Fairhaven", "Highmoor", "Lakeside", "Redcliff")
OBJECTS = ("a blue umbrella", "an old map", "a small wooden box", "a letter", "a basket of pears", "a red kite",
           "a broken clock", "a lantern", "a notebook", "a pair of boots", "a loaf of bread", "a silver key")
FEELINGS = ("happy", "tired", "curious", "worried", "surprised", "calm", "proud", "hungry", "cold", "excited")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
TIMES = ("early in the morning", "at noon", "in the afternoon", "in the evening", "after dinner", "before sunrise")
HOURS = ("noon", "the evening", "four o'clock", "sunset")
WEATHER = ("rain", "light snow", "strong wind", "sunshine", "thick fog", "thunderstorms", "clear skies", "drizzle")
ANIMALS = {  # name: (kind, home, food)
    "fox": ("mammal", "forests and fields", "mice, berries and insects"),
    "heron": ("bird", "rivers and marshes", "fish and frogs"),
    "badger": ("mammal", "woodland burrows", "worms, roots and fruit"),
    "otter": ("mammal", "rivers and coasts", "fish and crabs"),
    "owl": ("bird", "old trees and barns", "mice and small birds"),
    "trout": ("fish", "cold, clear streams", "insects and small fish"),
    "hedgehog": ("mammal", "hedges and gardens", "beetles, slugs and worms"),
    "swallow": ("bird", "farms and open country", "flying insects"),
    "toad": ("amphibian", "damp gardens and ponds", "slugs and insects"),
    "seal": ("mammal", "rocky shores", "fish and squid"),
}
TRAITS = ("It is most active at night.", "It can live for more than ten years.",
          "It rests during the coldest months.", "Its young stay with their mother for several months.",
          "It is often seen alone.", "It has very good hearing.", "It can swim well.",
          "It travels long distances in autumn.")
TASKS = {  # title: (things needed, steps)
    "bake simple bread": (("flour", "water", "salt", "yeast"),
                          ("Mix the flour and the salt in a large bowl.", "Add the yeast and the warm water.",
                           "Knead the dough for ten minutes.", "Leave it to rise for one hour.",
                           "Bake it in a hot oven until the crust is brown.")),
    "plant a tree": (("a young tree", "a spade", "compost", "water"),
                     ("Choose a sunny place with room for the roots.", "Dig a hole twice as wide as the roots.",
                      "Set the tree in the hole and fill it with soil and compost.",
                      "Press the soil down firmly.", "Water the tree well every week in the first summer.")),
    "fix a flat bicycle tyre": (("tyre levers", "a patch kit", "a pump"),
                                ("Take the wheel off the bicycle.", "Lift the tyre off the rim with the levers.",
                                 "Find the hole by pumping the tube and listening.",
                                 "Clean the area and press a patch on.",
                                 "Put the tube and the tyre back and pump it up.")),
    "make vegetable soup": (("carrots", "onions", "potatoes", "stock", "pepper"),
                            ("Chop the vegetables into small pieces.", "Fry the onions gently until soft.",
                             "Add the carrots, the potatoes and the stock.", "Simmer for twenty minutes.",
                             "Season with pepper and serve hot.")),
    "start a reading club": (("a quiet room", "a list of books", "a few friends"),
                             ("Ask a few friends who like to read.", "Agree on one book for the month.",
                              "Meet once a month to talk about it.",
                              "Let each member choose the next book in turn.")),
}
TOPICS = ("the new bus timetable", "the school fair", "the broken street lamp", "the football match",
          "the price of apples", "the summer concert", "the library's longer hours", "the lost dog")


# A story: four paragraphs, each a sequence of sentence slots, each slot a choice of sentences over the
# document's own cast and places (drawn once, so the story hangs together).
STORY = (
    (("On {weekday}, {time}, {hero} walked to the {place} in {town} with {pronoun} {relative}.",
      "{hero} had lived in {town} for {years} years, but had never been to the {place} before.",
      "It was a {mood} day in {month} when {hero} set out for the {place}."),
     ("The streets were quiet, and the air smelled of {weather}.", "Nobody else seemed to be awake yet.",
      "The bells of {town} were ringing in the distance.")),
    (("At the {place} {hero} met {other}, who was carrying {thing}.",),
     ('"Where did you find that?" asked {hero}. "Near the {later}," said {other}. "I think it belongs to someone '
      'in town."',
      "{other} explained that it had been lying by the {later} all morning, and nobody had come back for it.",
      '"Look what I found by the {later}," said {other}, holding it up. "Whose do you think it is?"')),
    (("They decided to ask around.", "They agreed to find its owner before dark.",
      "Neither of them wanted to keep it."),
     ("The baker had not seen it before, and neither had the man at the {third}.",
      "They asked at the {third}, at the {fourth} and at every shop on the way.",
      "A boy at the {third} thought he knew, but he was wrong."),
     ("By {hour} {hero} felt {feeling}, but {other} was sure they were close.",)),
    (("In the end an old woman recognised it.", "At last a fisherman stopped them in the street.",
      "Just then the {relative} of the mayor came running towards them."),
     ('"That was my father\'s," came the answer, with thanks warm enough to make {hero} blush.',),
     ("The two walked home {feeling} and {other_feeling}.", "{hero} never forgot that {weekday}.")),
)


def _story(rng: random.Random) -> str:
    hero, other = rng.sample(NAMES, 2)
    place, later, third, fourth = rng.sample(PLACES, 4)
    feeling, other_feeling = rng.sample(FEELINGS, 2)
    cast = dict(
        hero=hero, other=other, place=place, later=later, third=third, fourth=fourth, feeling=feeling,
        other_feeling=other_feeling, town=rng.choice(TOWNS), pronoun=rng.choice(("her", "his")),
        relative=rng.choice(RELATIVES), weekday=rng.choice(WEEKDAYS), time=rng.choice(TIMES),
        month=rng.choice(MONTHS), weather=rng.choice(WEATHER), thing=rng.choice(OBJECTS), hour=rng.choice(HOURS),
        years=rng.randint(2, 40), mood=rng.choice(("grey", "bright", "windy", "still", "long")),
    )
    paragraphs = [" ".join(rng.choice(slot) for slot in paragraph).format(**cast) for paragraph in STORY]
    title = f"{rng.choice(('A Walk to the', 'A Morning at the', 'Lost at the'))} {place.title()}"
    return title + "\n\n" + "\n\n".join(paragraphs[: rng.randint(3, 4)])


def _entry(rng: random.Random) -> str:
    animal = rng.choice(sorted(ANIMALS))
    kind, home, food = ANIMALS[animal]
    size = rng.randint(2, 9) * 10
    lines = [
        f"The {animal} is a {kind} that lives in {home}. Adults are about {size} centimetres long.",
        f"It feeds mainly on {food}. {' '.join(rng.sample(TRAITS, 2))}",
        f"In {rng.choice(TOWNS)}, people most often see the {animal} in {rng.choice(MONTHS)} and "
        f"{rng.choice(MONTHS)}. Counts by local volunteers found {rng.randint(3, 60)} of them last year.",
    ]
    return f"{animal.capitalize()}\n\n" + "\n\n".join(lines)


def _how_to(rng: random.Random) -> str:
    title = rng.choice(sorted(TASKS))
    needs, steps = TASKS[title]
    text = [f"How to {title}", "", f"You will need: {', '.join(needs[:-1])} and {needs[-1]}.", ""]
    text += [f"{i}. {step}" for i, step in enumerate(steps, 1)]
    text += ["", f"It takes about {rng.randint(2, 12) * 5} minutes of work. {rng.choice(NAMES)} says: "
             f"\"The first time is the hardest; after that it is easy.\""]
    return "\n".join(text)


def _letter(rng: random.Random) -> str:
    writer, reader = rng.sample(NAMES, 2)
    return "\n\n".join([
        f"Dear {reader},",
        f"Thank you for your letter. We are all well here in {rng.choice(TOWNS)}, although {rng.choice(WEATHER)} "
        f"has kept us indoors most of {rng.choice(MONTHS)}. My {rng.choice(RELATIVES)} sends you "
        f"{rng.choice(OBJECTS)}.",
        f"Next {rng.choice(WEEKDAYS)} we will visit the {rng.choice(PLACES)}. Will you come with us? "
        f"We could meet at the {rng.choice(PLACES)} {rng.choice(TIMES)}.",
        f"With love,\n{writer}",
    ])


def _dialogue(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    topic = rng.choice(TOPICS)
    return "\n".join([
        f"{a}: Have you heard about {topic}?",
        f"{b}: Only a little. What happened?",
        f"{a}: It was in the paper on {rng.choice(WEEKDAYS)}. Everyone at the {rng.choice(PLACES)} was talking "
        "about it.",
        f"{b}: I am {rng.choice(('glad', 'sorry', 'surprised', 'not surprised'))} to hear that. Will it change "
        "anything?",
        f"{a}: Maybe. We will know by {rng.choice(MONTHS)}.",
    ])


def _weather(rng: random.Random) -> str:
    town = rng.choice(TOWNS)
    days = [f"{day}: {rng.choice(WEATHER)}, a high of {rng.randint(-5, 30)} degrees."
            for day in rng.sample(WEEKDAYS, 3)]
    return f"Weather for {town}\n\n" + "\n".join(days) + (
        f"\n\nThe wind will come from the {rng.choice(('north', 'south', 'east', 'west'))}. "
        f"Take {rng.choice(OBJECTS)} if you go out {rng.choice(TIMES)}.")


KINDS = (_story, _entry, _how_to, _letter, _dialogue, _weather)


def web_documents(n: int, seed: int = 0) -> list[str]:
    """`n` generated English documents; document i depends only on (seed, i)."""
    documents = []
    for i in range(n):
        rng = random.Random(f"web/{seed}/{i}")
        documents.append(rng.choice(KINDS)(rng))
    return documents
