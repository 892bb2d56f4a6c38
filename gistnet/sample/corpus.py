"""A seeded generator of short English-like stories whose early facts decide later text,
and of long documents whose opening facts recur only after a long interlude.

Each story is about a few entities: a hero, a friend, a city, a pet animal, the hero's
job and one coloured object. Every entity is drawn from a fixed list of common words
that the sample tokenizer turns into ONE token (with its leading space), and every
sentence of the story names several of them again. So the 32 tokens of a block carry
a handful of facts (which name, which city, ...) that the next 32 tokens need, and a
single vector is enough to hold them: a few words out of a few hundred each.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# Names and cities are capitalised and always follow a space, so " Anna" is the token.
NAMES = tuple(
    """
    Anna Ben Clara David Emma Frank Grace Henry Iris Jack Kate Leo Maria Noah Olivia Paul
    Rose Sam Tina Victor Wendy Adam Bella Carl Diana Eric Fiona George Hannah Ian Julia Kevin
    Laura Mark Nina Oscar Peter Ruth Simon Tom Alice Brian Chloe Daniel Ella Felix Gina Hugo
    Ivy Jane Karl Lily Max Nora Owen Penny Ralph Sara Ted Vera Walter Zoe Amy Bob Cathy Dan
    Eva Fred Helen Isaac James Kim Lucy Mike Nancy Philip Rachel Steve Tony Ursula Vince Will
    Alan Betty Colin Dora Edward Flora Gary Holly Ivan Joan Keith Linda Martin Nick Olga Pam
    Roger Sophie Tim Anne Bill Cora Dean Ellen Fay Glen Heidi Igor Joe Kurt Lisa Mary Neil
    Otto Polly Rita Susan Troy Vicky Wade Yuri Albert Bruce Carol Dennis Edith Frances Gordon
    Harold Irene Jerry Kelly Lewis Mabel Norman Oliver Pearl Ray Stella Terry Victoria Wayne
    Agnes Boris Cecil Dolly Ernest Gwen Harvey Jill Lara Milo Nadia Quinn Rex Sid Thea Uri
    """.split()
)
CITIES = tuple(
    """
    Paris London Berlin Madrid Rome Vienna Prague Dublin Oslo Stockholm Helsinki Warsaw Lisbon
    Athens Cairo Tokyo Kyoto Osaka Seoul Beijing Shanghai Delhi Mumbai Lagos Nairobi Boston
    Chicago Denver Seattle Dallas Houston Miami Atlanta Phoenix Portland Austin Toronto
    Montreal Vancouver Sydney Melbourne Perth Auckland Lima Quito Santiago Havana Moscow Riga
    Budapest Munich Hamburg Cologne Frankfurt Zurich Geneva Milan Naples Venice Florence Turin
    Barcelona Seville Valencia Porto Lyon Marseille Nice Bordeaux Brussels Amsterdam Rotterdam
    Copenhagen Edinburgh Glasgow Manchester Liverpool Leeds Bristol Oxford Cambridge York
    Belfast Cardiff Istanbul Ankara Tehran Baghdad Dubai Doha Karachi Bangkok Hanoi Manila
    Jakarta Singapore Taipei Chennai Casablanca Tunis Accra Dakar Durban Montevideo Caracas
    Ottawa Calgary Winnipeg Halifax Quebec Detroit Cleveland Pittsburgh Baltimore Nashville
    Memphis Orlando Tampa Richmond Omaha Tulsa Reno Fresno Oakland Honolulu Adelaide Brisbane
    """.split()
)
OBJECTS = tuple(
    """
    lamp chair table clock kettle mirror basket blanket bicycle guitar violin piano drum camera
    radio telescope compass lantern umbrella hat scarf coat jacket glove ring necklace bracelet
    watch wallet backpack suitcase box jar vase bowl cup mug plate spoon knife pan pot bucket
    ladder hammer shovel rope kite ball doll puzzle book notebook pencil pen brush candle
    pillow quilt rug curtain sofa bench desk shelf cabinet key bell whistle flute trumpet harp
    fan heater stove teapot saddle wagon sled boat canoe tent hammock helmet crown mask statue
    painting poster envelope parcel ribbon badge medal trophy coin stamp marble feather sweater
    dress shirt belt shoe apron tray jug bottle flask globe calendar typewriter phone laptop
    """.split()
)
COLOURS = tuple(
    """
    red blue green yellow orange purple pink brown black white grey silver golden violet
    crimson scarlet navy teal turquoise beige ivory amber olive lime coral peach lavender
    indigo cyan bronze copper cream khaki plum rust emerald
    """.split()
)
ANIMALS = tuple(
    """
    dog cat horse rabbit parrot goat sheep cow pig duck goose hen owl fox hamster mouse turtle
    lizard snake frog donkey pony ferret canary pigeon crow raven swan deer llama camel monkey
    squirrel hedgehog badger otter beaver goldfish puppy kitten lamb piglet falcon hawk eagle
    sparrow robin bat wolf bear tiger lion zebra panda koala penguin seal dolphin crab spider
    """.split()
)
JOBS = tuple(
    """
    baker teacher doctor nurse farmer painter writer singer dancer pilot sailor driver builder
    carpenter plumber tailor chef cook waiter lawyer judge banker clerk engineer mechanic
    gardener fisherman hunter miner soldier guard officer dentist surgeon pharmacist librarian
    scientist chemist photographer journalist editor poet actor musician drummer pianist
    architect designer barber butcher grocer florist jeweller potter weaver shepherd
    blacksmith cleaner porter courier postman priest nanny student professor coach referee
    detective inspector accountant manager cashier
    """.split()
)

# The entity slots of a story and the list each is drawn from (the friend is another name).
ENTITY_LISTS: dict[str, tuple[str, ...]] = {
    "hero": NAMES,
    "friend": NAMES,
    "city": CITIES,
    "object": OBJECTS,
    "colour": COLOURS,
    "animal": ANIMALS,
    "job": JOBS,
}

# Every distinct word a story can use as an entity; the tokenizer must keep each one whole.
ENTITY_WORDS: tuple[str, ...] = tuple(
    sorted(set(NAMES) | set(CITIES) | set(OBJECTS) | set(COLOURS) | set(ANIMALS) | set(JOBS))
)

# The opening states every fact once, so a story's first block already holds all of them.
INTRO = (
    "This is a story about {hero}, who lives in {city}.",
    "{hero} works as {a_job} and has {a_animal}.",
    "{hero} also owns {a_colour} {object}.",
    "The best friend of {hero} is {friend}.",
)

# The body repeats the facts in varied sentences; most name two or three entities.
TEMPLATES = (
    "{hero} lives in {city}.",
    "{hero} works as {a_job} in {city}.",
    "{hero} has {a_colour} {object}.",
    "Every morning, {hero} feeds the {animal}.",
    "The {animal} likes to sit next to the {colour} {object}.",
    "{friend} is an old friend of {hero}.",
    "{friend} came to {city} to see {hero}.",
    "{hero} told {friend} about the {colour} {object}.",
    "As {a_job}, {hero} is busy most days.",
    "{friend} asked {hero} if the {animal} was hungry.",
    "In {city}, everyone knows the {job} and the {animal}.",
    "The {colour} {object} was a gift from {friend}.",
    "On weekends, {hero} and {friend} walk the {animal} around {city}.",
    "People in {city} often stop {hero} to ask about the {animal}.",
    "{hero} never lends the {object} to anyone, not even to {friend}.",
    "When it rains in {city}, {hero} stays home with the {animal}.",
    "{friend} thinks that {colour} is the best colour for {a_object}.",
    "The {job} from {city} has {a_animal} and {a_colour} {object}.",
    "{hero} is the only {job} in this part of {city}.",
    "{friend} does not like the {animal} very much.",
    "Later, {hero} cleaned the {colour} {object} and put it away.",
    "{hero} was born in {city} and never wanted to leave.",
    "{friend} once tried to buy the {object} from {hero}.",
    "After work, the {job} goes for a walk with the {animal}.",
    "The {animal} belongs to {hero}, but it also loves {friend}.",
    "{hero} says that {city} is the best city in the world.",
    "Nobody else in {city} owns {a_colour} {object} like that.",
    "{friend} writes letters to {hero} from time to time.",
    "Before breakfast, {hero} checks on the {animal} and the {object}.",
    "{hero} learned to be {a_job} many years ago.",
    "The {object} is {colour}, just like the door of the house in {city}.",
    "{friend} laughed when the {animal} jumped onto the {object}.",
    "Every year, {friend} visits {city} in the summer.",
    "{hero} bought the {object} at a small shop in {city}.",
    "The other workers call {hero} the best {job} they know.",
    "{friend} and the {animal} are good friends too.",
    "Sometimes {hero} dreams of leaving {city} with the {animal}.",
    "{friend} is not {a_job}, but {hero} is.",
    "The old {colour} {object} still sits by the window.",
    "Yesterday, {hero} lost the {object} and {friend} found it.",
)

# A story has this many body sentences after its intro (about 11 tokens each).
MIN_BODY_SENTENCES = 14
MAX_BODY_SENTENCES = 34


@dataclass(frozen=True)
class Story:
    """One generated document and the facts (slot -> word) it is about."""

    text: str
    facts: dict[str, str]


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _fill(template: str, facts: dict[str, str]) -> str:
    words = dict(facts)
    for slot in ("job", "animal", "colour", "object"):
        words[f"a_{slot}"] = _with_article(facts[slot])
    return template.format(**words)


def _draw_facts(rng: random.Random) -> dict[str, str]:
    hero, friend = rng.sample(NAMES, 2)
    return {
        "hero": hero,
        "friend": friend,
        "city": rng.choice(CITIES),
        "object": rng.choice(OBJECTS),
        "colour": rng.choice(COLOURS),
        "animal": rng.choice(ANIMALS),
        "job": rng.choice(JOBS),
    }


def _slots_of(template: str) -> frozenset[str]:
    return frozenset(name.removeprefix("a_") for name in _SLOT_PATTERN.findall(template))


_SLOT_PATTERN = re.compile(r"\{(\w+)\}")
_TEMPLATE_SLOTS = tuple(_slots_of(template) for template in TEMPLATES)


def _body(rng: random.Random, facts: dict[str, str], count: int) -> list[str]:
    """`count` body sentences about `facts`, told after an intro that named them all."""
    sentences = []
    # When each slot was last named; the intro names them all.
    last_named = dict.fromkeys(facts, 0)
    previous = -1
    for position in range(1, count + 1):
        # Half the sentences bring back the fact named longest ago, so every fact recurs
        # every few sentences; the rest are free. Never the same sentence twice in a row.
        if rng.random() < 0.5:
            stalest = min(last_named, key=lambda slot: (last_named[slot], slot))
            choices = [i for i, slots in enumerate(_TEMPLATE_SLOTS) if stalest in slots]
        else:
            choices = list(range(len(TEMPLATES)))
        index = rng.choice([i for i in choices if i != previous])
        previous = index
        for slot in _TEMPLATE_SLOTS[index]:
            last_named[slot] = position
        sentences.append(_fill(TEMPLATES[index], facts))
    return sentences


def _generate_story(rng: random.Random) -> Story:
    facts = _draw_facts(rng)
    sentences = [_fill(template, facts) for template in INTRO]
    sentences += _body(rng, facts, rng.randint(MIN_BODY_SENTENCES, MAX_BODY_SENTENCES))
    return Story(text=" ".join(sentences), facts=facts)


@dataclass(frozen=True)
class LongShape:
    """How a long document is told, in sentences of about 11 tokens each: its story's
    opening, then a second story about other people (the interlude), then the first story
    again. The first story's facts are named in its opening and not again until it
    resumes, `interlude` sentences later: what a compressed context must carry and a
    truncated one loses. The defaults make documents of about 470 to 650 tokens, whose
    first 512 tokens (the sample teacher's positions) reach into the resumed story."""

    opening: tuple[int, int] = (3, 6)  # body sentences after the first story's intro
    interlude: tuple[int, int] = (18, 24)  # the second story: intro, then these many
    resumed: tuple[int, int] = (16, 24)  # the first story again, until the document ends

    def __post_init__(self):
        for name in ("opening", "interlude", "resumed"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 1 <= low <= high; got {(low, high)}"
                )


def _generate_long_story(rng: random.Random, shape: LongShape) -> Story:
    facts = _draw_facts(rng)
    others = _draw_facts(rng)
    while {others["hero"], others["friend"]} & {facts["hero"], facts["friend"]}:
        others["hero"], others["friend"] = rng.sample(NAMES, 2)
    sentences = [_fill(template, facts) for template in INTRO]
    sentences += _body(rng, facts, rng.randint(*shape.opening))
    sentences += [_fill(template, others) for template in INTRO]
    sentences += _body(rng, others, rng.randint(*shape.interlude))
    sentences += _body(rng, facts, rng.randint(*shape.resumed))
    interlude = {f"interlude_{slot}": word for slot, word in others.items()}
    return Story(text=" ".join(sentences), facts={**facts, **interlude})


def generate_long_stories(
    n: int, *, seed: int | str, shape: LongShape | None = None
) -> list[Story]:
    """`n` long documents (see `LongShape`), seeded like `generate_stories`."""
    rng = random.Random(seed)
    shape = shape or LongShape()
    return [_generate_long_story(rng, shape) for _ in range(n)]


def generate_stories(n: int, *, seed: int | str) -> list[Story]:
    """`n` stories from a generator seeded with `seed`; the first k of n equal those of k."""
    rng = random.Random(seed)
    return [_generate_story(rng) for _ in range(n)]


def generate_documents(n: int, *, seed: int | str) -> list[str]:
    """The texts of `generate_stories(n, seed=seed)`."""
    return [story.text for story in generate_stories(n, seed=seed)]


@dataclass(frozen=True)
class CorpusFiles:
    """Where `write_corpus` put each split and how many documents it holds."""

    train_path: Path
    validation_path: Path
    n_train: int
    n_validation: int


def write_corpus(
    out_dir: str | Path,
    *,
    seed: int,
    n_train: int,
    n_validation: int,
    long: LongShape | None = None,
) -> CorpusFiles:
    """Write `train.jsonl` and `validation.jsonl` (one `{"text": ...}` a line) into `out_dir`.

    Each split has its own random stream, so the validation stories do not depend on
    how many training stories were asked for. With `long`, the documents are long ones
    of that shape (`generate_long_stories`), from streams of their own.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_validation)):
        paths[split] = out / f"{split}.jsonl"
        if long is None:
            texts = generate_documents(n, seed=f"{seed}:{split}")
        else:
            stories = generate_long_stories(n, seed=f"{seed}:long:{split}", shape=long)
            texts = [story.text for story in stories]
        with paths[split].open("w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")
    return CorpusFiles(
        train_path=paths["train"],
        validation_path=paths["validation"],
        n_train=n_train,
        n_validation=n_validation,
    )


def read_corpus(path: str | Path) -> list[str]:
    """The texts of a JSON-lines file written by `write_corpus`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]
