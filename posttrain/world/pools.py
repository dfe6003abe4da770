"""Entity pools shared by several families, each split into disjoint train and test parts."""

from __future__ import annotations

from posttrain.world.core import Pool


def _list(words: str) -> tuple[str, ...]:
    """A comma-separated string as a tuple, in order (never a set: set order varies between runs)."""
    return tuple(w.strip() for w in words.split(",") if w.strip())


# List categories: name -> every member the verifier accepts (lower case, singular).
CATEGORY_MEMBERS: dict[str, tuple[str, ...]] = {
    # train
    "fruits": _list("apple, banana, cherry, grape, orange, pear, peach, plum, mango, kiwi, lemon, lime, melon, "
                   "watermelon, pineapple, strawberry, blueberry, raspberry, apricot, fig, papaya, coconut, "
                   "pomegranate, grapefruit, blackberry, nectarine, cranberry, date, guava, lychee, tangerine, "
                   "avocado"),
    "colors": _list("red, blue, green, yellow, orange, purple, pink, brown, black, white, gray, grey, violet, "
                   "indigo, cyan, magenta, teal, turquoise, maroon, beige, gold, silver, navy, lavender, "
                   "crimson, scarlet"),
    "mammals": _list("dog, cat, horse, cow, lion, tiger, elephant, whale, dolphin, bear, wolf, fox, rabbit, mouse, "
                    "rat, deer, giraffe, zebra, monkey, gorilla, bat, kangaroo, pig, sheep, goat, camel, otter, "
                    "squirrel, hippopotamus, rhinoceros, cheetah, leopard, panda, koala, moose, beaver, hedgehog"),
    "vegetables": _list("carrot, potato, onion, broccoli, cabbage, spinach, lettuce, pea, bean, cucumber, celery, "
                       "garlic, pepper, cauliflower, kale, radish, beet, zucchini, pumpkin, leek, asparagus, corn, "
                       "eggplant, turnip, artichoke, okra, squash, sweet potato, brussels sprout, parsnip"),
    "musical instruments": _list("piano, guitar, violin, cello, flute, drum, trumpet, saxophone, clarinet, harp, "
                                "trombone, oboe, bass, banjo, ukulele, accordion, harmonica, tuba, viola, "
                                "mandolin, bagpipes, organ, xylophone, bassoon, french horn, sitar, keyboard"),
    "sports": _list("soccer, football, basketball, tennis, baseball, cricket, rugby, golf, hockey, volleyball, "
                   "swimming, boxing, cycling, badminton, skiing, surfing, wrestling, rowing, fencing, archery, "
                   "handball, softball, snowboarding, gymnastics, running, table tennis, polo, lacrosse, "
                   "bowling, karate, judo"),
    # test
    "birds": _list("eagle, sparrow, robin, owl, parrot, penguin, pigeon, crow, raven, hawk, falcon, swan, duck, "
                  "goose, flamingo, peacock, ostrich, hummingbird, pelican, seagull, gull, woodpecker, heron, "
                  "stork, canary, finch, kingfisher, vulture, toucan, emu, turkey, chicken, magpie, swallow, "
                  "albatross, crane, cardinal, blue jay, starling, wren, dove"),
    "metals": _list("iron, copper, gold, silver, aluminum, aluminium, zinc, lead, tin, nickel, platinum, titanium, "
                   "mercury, cobalt, chromium, tungsten, magnesium, lithium, sodium, potassium, calcium, "
                   "uranium, steel, bronze, brass"),
    "vehicles": _list("car, bus, truck, bicycle, bike, motorcycle, train, tram, van, taxi, scooter, boat, ship, "
                     "airplane, plane, helicopter, subway, ferry, tractor, jeep, limousine, ambulance, "
                     "skateboard, canoe, yacht, submarine, rocket, caravan, minivan, lorry"),
    "trees": _list("oak, maple, pine, birch, willow, elm, cedar, spruce, fir, ash, beech, palm, redwood, sequoia, "
                  "cherry, apple, poplar, cypress, magnolia, baobab, eucalyptus, sycamore, hickory, walnut, "
                  "chestnut, larch, juniper, yew, aspen, olive, teak, mahogany"),
    "tools": _list("hammer, screwdriver, wrench, saw, drill, pliers, chisel, spanner, axe, shovel, rake, level, "
                  "tape measure, file, clamp, sander, crowbar, mallet, trowel, hoe, scissors, knife, ladder, "
                  "vise, sandpaper, pickaxe, hacksaw"),
}
CATEGORIES = Pool(
    train=("fruits", "colors", "mammals", "vegetables", "musical instruments", "sports"),
    test=("birds", "metals", "vehicles", "trees", "tools"),
)

# Single lower-case words for transforms and sorting (no palindromes).
WORDS = Pool(
    train=(_list("apple, river, stone, cloud, tiger, piano, garden, silver, ocean, forest, planet, candle, "
                     "window, marble, rocket, butter, pencil, jungle, mirror, lemon, castle, basket, dragon, "
                     "wizard, rabbit, summer, copper, violet, bridge, kitten, ladder, tunnel, puzzle, orange, "
                     "engine, helmet, pillow, carpet, button, meadow")),
    test=(_list("lantern, cobalt, pepper, thunder, walnut, saddle, glacier, velvet, quartz, pirate, banjo, "
                    "nectar, orbit, tulip, cactus, falcon, dolphin, mosaic, prism, raven, sphinx, timber, yogurt, "
                    "zephyr, anchor, blizzard, canyon, compass, hammock, jigsaw")),
)


def _more_train_words() -> tuple[str, ...]:
    """Members of the train categories that can serve as transform/sort words: single lower-case words of 3
    to 10 letters, no palindromes, none a test word or a member of a test category."""
    test_members = {m for c in CATEGORIES.test for m in CATEGORY_MEMBERS[c]} | set(WORDS.test)
    words = [m for c in CATEGORIES.train for m in CATEGORY_MEMBERS[c]
             if m.isalpha() and 3 <= len(m) <= 10 and m != m[::-1] and m not in test_members]
    return tuple(w for w in dict.fromkeys(words) if w not in WORDS.train)


# Words the word_transform and sort_words prompts use: the train half is widened with train-category members
# (the corpus already spells, reverses and sorts them), so SFT learns to copy the word from the prompt instead
# of recalling a few memorised answers. `WORDS` stays the corpus's own list.
PROMPT_WORDS = Pool(train=WORDS.train + _more_train_words(), test=WORDS.test)

# Country -> capital (first name is canonical, the rest are accepted spellings).
CAPITALS: dict[str, tuple[str, ...]] = {
    # train
    "France": ("Paris",), "Germany": ("Berlin",), "Italy": ("Rome",), "Spain": ("Madrid",), "Japan": ("Tokyo",),
    "Egypt": ("Cairo",), "Canada": ("Ottawa",), "Kenya": ("Nairobi",), "Peru": ("Lima",), "Norway": ("Oslo",),
    "Greece": ("Athens",), "Russia": ("Moscow",), "China": ("Beijing",), "India": ("New Delhi", "Delhi"),
    "Argentina": ("Buenos Aires",), "Thailand": ("Bangkok",), "Ireland": ("Dublin",), "Portugal": ("Lisbon",),
    "Poland": ("Warsaw",), "Sweden": ("Stockholm",), "Austria": ("Vienna",), "Cuba": ("Havana",),
    "Chile": ("Santiago",), "Turkey": ("Ankara",), "Iran": ("Tehran",), "South Korea": ("Seoul",),
    "Vietnam": ("Hanoi",), "Hungary": ("Budapest",), "Belgium": ("Brussels",),
    # test
    "Finland": ("Helsinki",), "Denmark": ("Copenhagen",), "the Netherlands": ("Amsterdam",),
    "Australia": ("Canberra",), "Brazil": ("Brasilia",), "Colombia": ("Bogota",), "Morocco": ("Rabat",),
    "Nigeria": ("Abuja",), "Ghana": ("Accra",), "Ethiopia": ("Addis Ababa",), "Indonesia": ("Jakarta",),
    "the Philippines": ("Manila",), "Pakistan": ("Islamabad",), "the Czech Republic": ("Prague",),
    "Romania": ("Bucharest",), "Ukraine": ("Kyiv", "Kiev"), "Iceland": ("Reykjavik",),
    "New Zealand": ("Wellington",), "Venezuela": ("Caracas",), "Switzerland": ("Bern", "Berne"),
    "Saudi Arabia": ("Riyadh",), "Malaysia": ("Kuala Lumpur",),
}
_COUNTRIES = tuple(CAPITALS)
COUNTRIES = Pool(train=_COUNTRIES[:29], test=_COUNTRIES[29:])

# Simple questions with a short answer: (question, accepted answer words, reference sentence).
BASE_QUESTIONS = Pool(
    train=(
        ("What is the capital of France?", ("paris",), "Paris is the capital of France."),
        ("What color is a clear daytime sky?", ("blue",), "A clear daytime sky is blue."),
        ("How many days are in a week?", ("seven", "7"), "A week has seven days."),
        ("What do bees make?", ("honey",), "Bees make honey."),
        ("What is frozen water called?", ("ice",), "Frozen water is called ice."),
        ("Which planet do we live on?", ("earth",), "We live on planet Earth."),
        ("What is the opposite of cold?", ("hot", "warm"), "The opposite of cold is hot."),
        ("Which animal barks?", ("dog", "dogs"), "A dog barks."),
        ("What do plants need from the sun?", ("light", "sunlight"), "Plants need sunlight to grow."),
    ),
    test=(
        ("What is the capital of Japan?", ("tokyo",), "Tokyo is the capital of Japan."),
        ("How many legs does a spider have?", ("eight", "8"), "A spider has eight legs."),
        ("What color are ripe strawberries?", ("red",), "Ripe strawberries are red."),
        ("What do cows give us to drink?", ("milk",), "Cows give us milk."),
        ("Which season is the coldest?", ("winter",), "Winter is the coldest season."),
        ("What is the largest ocean on Earth?", ("pacific",), "The Pacific is the largest ocean."),
        ("What do you use to write on paper?", ("pen", "pencil"), "You write on paper with a pen."),
    ),
)

# Questions with a one-word answer (`format`), and their accepted answers.
ONE_WORD_QUESTIONS = Pool(
    train=(("What color is the sky on a clear day?", ("blue",)), ("What is the opposite of hot?", ("cold",)),
           ("What do bees make?", ("honey",)), ("What is the largest planet in our solar system?", ("jupiter",)),
           ("What gas do humans need to breathe?", ("oxygen",)), ("What color is fresh grass?", ("green",)),
           ("What is the opposite of day?", ("night",)), ("Which animal says moo?", ("cow",))),
    test=(("What is the opposite of up?", ("down",)), ("Which season comes after winter?", ("spring",)),
          ("Which planet is known as the Red Planet?", ("mars",)), ("What do you call a baby cat?", ("kitten",)),
          ("What color is a ripe banana?", ("yellow",)), ("What is the opposite of wet?", ("dry",)),
          ("Which star is closest to the Earth?", ("sun", "the sun"))),
)

# The questions `ifeval` and `system_rule` wrap their constraints around. Test: the shared simple questions'
# test half. Train: their train half, the one-word questions and "What is the capital of X?" for the train
# countries, so SFT learns to answer the question asked, not to recall a few memorised answers.
_SHARED_QUESTIONS = {q for q, *_ in BASE_QUESTIONS.train + BASE_QUESTIONS.test}
INSTRUCTION_QUESTIONS = Pool(
    train=BASE_QUESTIONS.train
    + tuple((q, answers, f"{answers[0].capitalize()}.") for q, answers in ONE_WORD_QUESTIONS.train)
    + tuple((q, tuple(c.lower() for c in CAPITALS[country]), f"The capital of {country} is {CAPITALS[country][0]}.")
            for country in COUNTRIES.train
            if (q := f"What is the capital of {country}?") not in _SHARED_QUESTIONS),
    test=BASE_QUESTIONS.test,
)
