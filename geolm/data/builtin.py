"""Built-in corpus: a deterministic generator of short, simple English stories (TinyStories-like).

It exists so that every geolm command runs offline on a fresh machine. It is a small hand-written grammar:
characters (children and talking animals, with agreeing pronouns), helpers, places, objects with adjectives,
activities with their base / past / -ing forms, feelings, and eight plot arcs (find and fix, lost and found,
sharing, fear, helping an animal, not listening, making something, a gift). Each arc picks one of several
wordings for each step, so stories vary in structure as well as in their nouns, verbs and adjectives.

Determinism: story i of a split is a function of (seed, split, i) only (`random.Random` seeded with a string,
which Python hashes with SHA-512, stable across versions and platforms), so the first N stories are the same
whatever N is. Stories within a split are distinct; validation stories never repeat a training story.

This is *not* TinyStories: numbers measured on it say nothing about the published results. The loader says so.
"""
import random

GIRLS = ("Lily", "Sue", "Mia", "Anna", "Lucy", "Emma", "Sara", "Zoe", "Amy", "Kate", "Ella", "Rose", "Jane",
         "Molly", "Ruby", "Daisy", "Lola", "Nina", "Ivy", "Grace")
BOYS = ("Tom", "Tim", "Ben", "Max", "Sam", "Jack", "Leo", "Finn", "Joe", "Bob", "Jake", "Dan", "Ted", "Noah",
        "Luke", "Oliver", "Alex", "Billy", "Timmy", "Eli")
PET_NAMES = ("Spot", "Fluffy", "Whiskers", "Buddy", "Pip", "Coco", "Bella", "Sunny", "Momo", "Patch", "Ziggy",
             "Bubbles", "Rusty", "Snow", "Peanut")
ANIMALS = ("cat", "dog", "bunny", "bird", "bear", "frog", "duck", "mouse", "fox", "puppy", "kitten", "squirrel",
           "owl", "pig", "lamb")
PERSON_ADJ = ("little", "happy", "curious", "kind", "brave", "shy", "silly", "friendly", "playful", "smart",
              "cheerful", "gentle")
HELPERS = (("mom", "she"), ("dad", "he"), ("grandma", "she"), ("grandpa", "he"), ("big sister", "she"),
           ("big brother", "he"))
PLACES = (("park", "in the park"), ("garden", "in the garden"), ("beach", "at the beach"),
          ("forest", "in the forest"), ("farm", "on the farm"), ("lake", "by the lake"),
          ("backyard", "in the backyard"), ("playground", "at the playground"), ("meadow", "in the meadow"),
          ("school", "at school"), ("zoo", "at the zoo"), ("hill", "on the hill"), ("river", "by the river"),
          ("market", "at the market"), ("woods", "in the woods"))
HOMES = ("small town", "little village", "big city", "house by the sea", "house on a hill", "cozy house",
         "quiet village")
OBJECTS = ("ball", "kite", "doll", "teddy bear", "toy car", "book", "hat", "shell", "box", "flower", "balloon",
           "drum", "boat", "truck", "puzzle", "rock", "key", "blanket", "cup", "crayon", "bike", "train", "robot",
           "scarf", "bucket", "feather", "star", "spoon", "bell", "jar", "umbrella", "necklace")
OBJ_ADJ = ("red", "blue", "green", "yellow", "big", "small", "shiny", "soft", "old", "new", "pretty", "funny",
           "round", "pink", "purple", "golden", "striped", "tiny", "bright", "special")
# (base, past, -ing) forms of activities
ACTIVITIES = (("play", "played", "playing"), ("run", "ran", "running"), ("jump", "jumped", "jumping"),
              ("sing", "sang", "singing"), ("dance", "danced", "dancing"),
              ("draw pictures", "drew pictures", "drawing pictures"), ("read books", "read books", "reading books"),
              ("swim", "swam", "swimming"), ("climb trees", "climbed trees", "climbing trees"),
              ("pick flowers", "picked flowers", "picking flowers"),
              ("build sand castles", "built sand castles", "building sand castles"),
              ("chase butterflies", "chased butterflies", "chasing butterflies"),
              ("look at the clouds", "looked at the clouds", "looking at the clouds"),
              ("play games", "played games", "playing games"), ("explore", "explored", "exploring"),
              ("bake cookies", "baked cookies", "baking cookies"), ("fly kites", "flew kites", "flying kites"),
              ("splash in puddles", "splashed in puddles", "splashing in puddles"),
              ("play hide and seek", "played hide and seek", "playing hide and seek"))
GOOD_FEELINGS = ("happy", "glad", "excited", "proud", "joyful")
BAD_FEELINGS = ("sad", "upset", "worried", "scared", "angry")
TIMES = ("One day", "One sunny day", "One morning", "One afternoon", "One rainy day", "One windy day",
         "One warm day", "One cold morning", "Later that day", "The next day")
NICE_DAY = ("The sun was shining and the birds were singing.", "The sky was blue and the grass was green.",
            "It was a beautiful day.", "A soft wind was blowing.", "The flowers were bright and pretty.")
HIDING = ("under the bed", "behind the big tree", "in the toy box", "under a pile of leaves", "next to the door",
          "inside an old shoe", "under the table", "behind the couch")
FEARS = (("the dark", "when the lights went out", "turned off the light", "the room was calm and quiet"),
         ("the big dog next door", "when the dog came to the fence", "walked up to the dog",
          "the dog just wanted to play"),
         ("the loud thunder", "when the storm came", "listened to the rain", "the storm would soon pass"),
         ("the deep water", "when it was time to swim", "put a foot in the water", "the water was warm and nice"),
         ("the tall slide", "at the playground", "climbed up the slide", "the slide was fast and fun"))
HURT_ANIMALS = (("a little bird", "it had a hurt wing", "wrapped the wing with a soft cloth"),
                ("a small kitten", "it was stuck high up in a tree", "got a ladder and helped it down"),
                ("a tiny puppy", "it was lost and cold in the rain", "dried it with a warm towel"),
                ("a baby duck", "it was stuck in the mud", "gently pulled it out of the mud"),
                ("a little frog", "it could not get out of a hole", "lifted it out with a big leaf"))
MISCHIEF = (("go near the lake alone", "went to the lake alone", "slipped and fell into the cold water"),
            ("climb the tall tree", "climbed the tall tree", "fell down and hurt {his} knee"),
            ("play with the ball in the house", "threw the ball in the house", "broke a pretty vase"),
            ("eat all the cookies", "ate all the cookies", "got a big tummy ache"),
            ("play in the mud in {his} new clothes", "jumped in the mud", "got {his} new clothes all dirty"),
            ("run on the wet floor", "ran on the wet floor", "slipped and bumped {his} head"))
MAKES = (("a tall tower of blocks", "the tower fell down", "put the big blocks at the bottom"),
         ("a cake for {his} {helper}", "the cake was flat and burnt", "followed the recipe step by step"),
         ("a big sand castle", "a wave washed it away", "built it far from the water"),
         ("a picture of {his} family", "the paint made a big mess", "used a little paint at a time"),
         ("a paper boat", "the boat got wet and sank", "folded the paper very tight"),
         ("a bird house", "the roof kept falling off", "used more glue for the roof"))



def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s):
    i = 1 if s[:1] == '"' else 0  # a sentence may open with a quote
    return s[:i] + s[i:i + 1].upper() + s[i + 1:]


class _Ctx(dict):
    """Template slots; `fill` formats and capitalises the first letter of each sentence."""

    def fill(self, r, *options):
        return _cap(r.choice(options).format(**self))


def _person(r, prefix=""):
    kind = r.random()
    if kind < 0.6:
        girl = r.random() < 0.5
        name = r.choice(GIRLS if girl else BOYS)
        noun = "girl" if girl else "boy"
    else:
        girl = r.random() < 0.5
        name, noun = r.choice(PET_NAMES), r.choice(ANIMALS)
    he, him, his, himself = ("she", "her", "her", "herself") if girl else ("he", "him", "his", "himself")
    return {prefix + "name": name, prefix + "kind": noun, prefix + "he": he, prefix + "him": him,
            prefix + "his": his, prefix + "himself": himself, prefix + "He": _cap(he), prefix + "His": _cap(his)}


def _setting(r):
    c = _Ctx(_person(r))
    f = _person(r, "f")
    while f["fname"] == c["name"]:
        f = _person(r, "f")
    c.update(f)
    helper, hhe = r.choice(HELPERS)
    place, at_place = r.choice(PLACES)
    thing, adj = r.choice(OBJECTS), r.choice(OBJ_ADJ)
    act = r.choice(ACTIVITIES)
    c.update(adj=r.choice(PERSON_ADJ), helper=helper, Helper=_cap(helper), hhe=hhe, Hhe=_cap(hhe),
             place=place, at_place=at_place,
             thing=thing, a_thing=_a(adj + " " + thing), the_thing="the " + adj + " " + thing,
             act=act[0], acted=act[1], acting=act[2], home=r.choice(HOMES), time=r.choice(TIMES),
             good=r.choice(GOOD_FEELINGS), bad=r.choice(BAD_FEELINGS),
             nice=r.choice(NICE_DAY), hide=r.choice(HIDING))
    return c


def _opening(r, c):
    first = c.fill(r, "Once upon a time, there was {adj_kind} named {name}.",
                   "Once upon a time, in a {home}, there lived {adj_kind} named {name}.",
                   "There once was {adj_kind} called {name}.",
                   "Once upon a time, there was {adj_kind}. {His} name was {name}.")
    second = c.fill(r, "{He} liked to {act} {at_place}.", "{He} loved {acting} with {his} friend {fname}.",
                    "Every day, {he} {acted} {at_place}.", "{name} had {a_thing} that {he} loved very much.",
                    "{He} was always {good} and liked to {act}.")
    return [first, second]


PROBLEMS = (("broken", "They worked hard and did not give up.", "Soon, the {thing} was as good as new."),
            ("very dirty", "They washed it with soap and warm water.", "At last, the {thing} looked pretty again."),
            ("stuck", "They pulled and pulled until it came free.", "At last, the {thing} was free."))


def _arc_find_fix(r, c):
    problem, work, done = r.choice(PROBLEMS)
    c.update(problem=problem)
    p2 = [c.fill(r, "{time}, {name} went to the {place} with {his} {helper}.",
                 "{time}, {name} was {acting} {at_place}."),
          c.fill(r, "{He} saw something under a bush. It was {a_thing}!", "{He} found {a_thing} on the ground.",
                 "Suddenly, {he} saw {a_thing} next to a big rock."),
          c.fill(r, "But the {thing} was {problem}.", "Oh no, the {thing} was {problem}.")]
    p3 = [c.fill(r, '"{Helper}, can you help me?" asked {name}.', '"Can you help me?" {name} asked {his} {helper}.'),
          c.fill(r, '{His} {helper} smiled and said, "Of course! Let\'s do it together."',
                 '"Yes, I can help," said {his} {helper}.'),
          c.fill(r, work)]
    p4 = [c.fill(r, done),
          c.fill(r, "{name} was very {good}. {He} said, \"Thank you, {Helper}!\"",
                 "{name} hugged {his} {helper} and played with the {thing} all day.")]
    return [p2, p3, p4]


def _arc_lost(r, c):
    p1 = [c.fill(r, "{name} had {a_thing}. It was {his} favorite toy.", "{His} favorite toy was {a_thing}."),
          c.fill(r, "{He} took it everywhere {he} went.", "{He} played with it every day.")]
    p2 = [c.fill(r, "{time}, {name} went to the {place} to {act}.", "{time}, {name} {acted} {at_place}."),
          c.fill(r, "When {he} came home, the {thing} was gone!",
                 "Then {he} looked for {his} {thing}, but it was not there."),
          c.fill(r, "{name} felt very {bad}.", "{name} started to cry.")]
    p3 = [c.fill(r, "{His} friend {fname} saw {him} and came to help.", "{His} friend {fname} wanted to help."),
          c.fill(r, "They looked everywhere. They looked {at_place} and in the house.",
                 "They looked high and low."),
          c.fill(r, '"Look!" said {fname}. "There it is!"', '"I see it!" shouted {fname}.'),
          c.fill(r, "The {thing} was {hide}.", "It was {hide} all along.")]
    p4 = [c.fill(r, '{name} hugged {fname}. "Thank you!" {he} said.', "{name} smiled and thanked {fname}."),
          c.fill(r, "From that day on, {name} was always careful with {his} {thing}.",
                 "{name} learned that friends make everything better.")]
    return [p1, p2, p3, p4]


def _arc_share(r, c):
    p2 = [c.fill(r, "{time}, {name} and {fname} were {acting} {at_place}.",
                 "{time}, {name} went to the {place} with {his} friend {fname}."),
          c.fill(r, "They found {a_thing}.", "They both saw {a_thing} and wanted it."),
          c.fill(r, '"It\'s mine!" said {name}. "No, it\'s mine!" said {fname}.',
                 '"I want it!" said {name}. "I saw it first!" said {fname}.'),
          c.fill(r, "They pulled and pulled.", "They started to fight and both felt {bad}.")]
    p3 = [c.fill(r, "{His} {helper} came and said, \"You can share it. You can take turns.\"",
                 "Then {name} had an idea. \"Let's play with it together!\" {he} said."),
          c.fill(r, "So they took turns with the {thing}.", "So they shared the {thing}."),
          c.fill(r, "Playing together was much more fun.", "They laughed and played all day.")]
    p4 = [c.fill(r, "{name} and {fname} became best friends.", "At the end of the day, they were both {good}."),
          c.fill(r, "{name} learned that sharing is caring.", "They learned that friends make everything better.")]
    return [p2, p3, p4]


def _arc_fear(r, c):
    fear, when, act, calm = r.choice(FEARS)
    c.update(fear=fear, when=when, fact=act, calm=calm)
    p2 = [c.fill(r, "But {name} was scared of {fear}.", "There was one thing {name} did not like. It was {fear}."),
          c.fill(r, "{He} felt {bad} {when}.", "{He} wanted to hide {when}.")]
    p3 = [c.fill(r, '"Don\'t be scared," said {his} {helper}. "I am here with you."',
                 '{His} {helper} held {his} hand and said, "You are brave. You can do it."'),
          c.fill(r, "{name} took a deep breath and {fact}.", "Slowly, {name} {fact}."),
          c.fill(r, "It was not scary at all! {name} saw that {calm}.", "{name} saw that {calm}.")]
    p4 = [c.fill(r, "{name} was very proud of {himself}.", "{name} smiled a big smile."),
          c.fill(r, "{He} learned that being brave feels good.", "{He} was not scared of {fear} anymore.")]
    return [p2, p3, p4]


def _arc_animal(r, c):
    animal, trouble, fix = r.choice(HURT_ANIMALS)
    c.update(animal=animal, trouble=trouble, fix=fix)
    p2 = [c.fill(r, "{time}, {name} was {acting} {at_place}. {nice}", "{time}, {name} went to the {place}."),
          c.fill(r, "{He} saw {animal}. Oh no, {trouble}!",
                 "{He} heard a small sound. It was {animal}, and {trouble}.")]
    p3 = [c.fill(r, "{name} wanted to help.", "{name} knew {he} had to help."),
          c.fill(r, "{He} ran to get {his} {helper}.", "{He} asked {his} {helper} what to do."),
          c.fill(r, "Together, they {fix}.", "{His} {helper} {fix}, and {name} helped.")]
    p4 = [c.fill(r, "The animal was safe now. It looked at {name} and seemed to smile.",
                 "Soon the animal was happy again."),
          c.fill(r, "After that, it came to visit {name} every day.", "They became good friends."),
          c.fill(r, "{name} learned that it is good to help others.", "{name} felt warm and {good} inside.")]
    return [p2, p3, p4]


def _arc_mischief(r, c):
    rule, did, bad = (s.format(**c) for s in r.choice(MISCHIEF))
    c.update(rule=rule, did=did, oops=bad)
    p2 = [c.fill(r, '{time}, {his} {helper} said, "Please do not {rule}."', '"Do not {rule}," said {his} {helper}.'),
          c.fill(r, "But {name} did not listen.", "But {name} wanted to have fun."),
          c.fill(r, "{He} {did}.", "When no one was looking, {he} {did}.")]
    p3 = [c.fill(r, "Oh no! {He} {oops}.", "Then something bad happened. {He} {oops}."),
          c.fill(r, "{name} felt very {bad}.", "{name} began to cry.")]
    p4 = [c.fill(r, "{His} {helper} came and gave {him} a hug.", "{His} {helper} helped {him} and was not angry."),
          c.fill(r, '"I\'m sorry," said {name}. "I will listen next time."',
                 '"I should have listened," {name} said.'),
          c.fill(r, "From that day on, {name} always listened to {his} {helper}.",
                 "{name} learned that it is important to listen.")]
    return [p2, p3, p4]


def _arc_make(r, c):
    what, fail, tip = (s.format(**c) for s in r.choice(MAKES))
    c.update(what=what, fail=fail, tip=tip)
    p2 = [c.fill(r, "{time}, {name} wanted to make {what}.", "{time}, {name} had an idea. {He} would make {what}."),
          c.fill(r, "{He} worked very hard.", "{He} started right away."),
          c.fill(r, "But {fail}.", "Oh no, {fail}!"),
          c.fill(r, "{name} felt {bad}.", "{name} wanted to give up.")]
    p3 = [c.fill(r, "{fname} saw {him} and said, \"Let's try again. I will help you.\"",
                 "{His} {helper} said, \"Don't give up. Try again.\""),
          c.fill(r, "This time, they {tip}.", "This time, {name} {tip}."),
          c.fill(r, "It worked!", "It was perfect!")]
    p4 = [c.fill(r, "{name} was so {good}.", "{name} jumped up and down with joy."),
          c.fill(r, "{He} learned that trying again is the best way to learn.", "{He} showed it to everyone.")]
    return [p2, p3, p4]


def _arc_gift(r, c):
    p2 = [c.fill(r, "{time}, it was {fname}'s birthday.", "{time}, {name} learned that {fname} was sad."),
          c.fill(r, "{name} wanted to give {fname} a gift.", "{name} wanted to make {fname} happy."),
          c.fill(r, "{He} looked {at_place} and found {a_thing}.", "{He} went to the {place} and got {a_thing}.")]
    p3 = [c.fill(r, "{He} put it in a box with {a_bow}.", "{He} wrapped it in {adj2} paper."),
          c.fill(r, '{He} gave it to {fname} and said, "This is for you!"', "{He} gave the gift to {fname}."),
          c.fill(r, "{fname} opened it and smiled.", "{fname} was so surprised.")]
    p4 = [c.fill(r, '"Thank you, {name}! I love it!" said {fname}.', "{fname} gave {name} a big hug."),
          c.fill(r, "They {acted} together all afternoon.", "{name} learned that it is nice to give.")]
    return [p2, p3, p4]


ARCS = (_arc_find_fix, _arc_lost, _arc_share, _arc_fear, _arc_animal, _arc_mischief, _arc_make, _arc_gift)


def make_story(r):
    """One story from a `random.Random`; paragraphs separated by a blank line, like the HF text field."""
    c = _setting(r)
    c["adj_kind"] = _a(c["adj"] + " " + c["kind"])
    c["adj2"] = r.choice(OBJ_ADJ)
    c["a_bow"] = _a(c["adj2"] + " bow")
    opening = _opening(r, c)
    if r.random() < 0.3:
        opening.append(c["nice"])
    paras = r.choice(ARCS)(r, c)
    return "\n\n".join(" ".join(p) for p in [opening] + paras)


def generate_stories(n, seed=0, split="train", exclude=()):
    """First n distinct stories of (seed, split); stories in `exclude` are skipped. Prefix-stable in n."""
    r = random.Random(f"geolm-corpus:{seed}:{split}")
    seen, out, exclude = set(), [], set(exclude)
    tries = 0
    while len(out) < n:
        s = make_story(r)
        tries += 1
        if s not in seen and s not in exclude:
            seen.add(s)
            out.append(s)
        elif tries > 20 * n + 1000:  # pragma: no cover - would mean the grammar lost its variety
            raise RuntimeError("built-in story generator produced too many duplicates")
    return out


def builtin_corpus(n_train, n_val, seed=0):
    """(train, val) story lists; val never repeats a training story."""
    train = generate_stories(n_train, seed, "train")
    val = generate_stories(n_val, seed, "validation", exclude=train)
    return train, val
