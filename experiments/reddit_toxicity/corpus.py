"""A generated corpus of Reddit-style parent -> comment pairs (the offline default).

This corpus is SYNTHETIC. No Reddit-like text with toxicity labels ships in
any package this project can use offline, so the
default data set of the Reddit task (docs/algorithm.md §7) is generated here from
templates and slot-filled vocabulary. It is not real Reddit data and says
nothing about real users; it exists so the task runs end to end with no
download. Real data comes in through ``data.py`` (the paper's CSV layout,
JSONL, TFDS ``civil_comments``).

What is generated, deterministically from ``seed`` (a numpy ``Generator``):

* a parent (a post or comment) on one of ``len(TOPICS)`` topics (games,
  cooking, programming, ...), from parent templates filled with the topic's
  things, tips and claims;
* a reply of one of three intended kinds, with the intended level stored in
  ``toxicity`` (an int, see ``rewards.label``):

  - 0, civil (``CIVIL_SHARE``): helpful, agreeing, polite disagreement, jokes,
    or low-effort replies ("Following.");
  - 1, mild (``MILD_SHARE``): rude, dismissive or mildly profane
    ("That's a pretty dumb take on ...");
  - 2, toxic (``TOXIC_SHARE``): insults and strong profanity.

  So ``MILD_SHARE + TOXIC_SHARE`` = 25% of replies are insulting or toxic by
  construction. In ``MID_SENTENCE_SHARE`` of those the insult comes after a
  harmless opening ("Good point about the engine, but you're an absolute idiot
  for thinking ..."; ``mid_sentence=True``), so only the later tokens are bad
  and token-level credit assignment matters.
* ``score``: synthetic upvotes, an int correlated with the reply's kind and
  effort (helpful civil replies score highest, toxic ones lowest) plus
  Gaussian noise and an occasional "went viral" boost, so the sign of the
  score (the ``upvotes`` reward) is informative but noisy.

The vocabulary holds general insults and profanity only: no slurs and
nothing aimed at a group identity. The judge in ``rewards.py`` scores the
texts independently of the intended level; the two agree only roughly
(the judge is a bag-of-words model: a long harmless opening dilutes an
insult, and it flags some harmless words).

Records are dicts ``{parent, comment, score, toxicity, topic, mid_sentence}``;
all ``(parent, comment)`` pairs are distinct. The default 20k pairs take about
a second to generate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "CIVIL_SHARE",
    "DEFAULT_PAIRS",
    "MID_SENTENCE_SHARE",
    "MILD_SHARE",
    "TOPICS",
    "TOXIC_SHARE",
    "Topic",
    "generate_corpus",
]

DEFAULT_PAIRS = 20_000
MILD_SHARE = 0.10
TOXIC_SHARE = 0.15
CIVIL_SHARE = 1.0 - MILD_SHARE - TOXIC_SHARE
MID_SENTENCE_SHARE = 0.4  # of the mild and toxic replies


@dataclasses.dataclass(frozen=True)
class Topic:
    """Vocabulary of one topic.

    ``things`` are noun phrases, ``tips`` imperative verb phrases (lower case,
    no final period), ``claims`` opinions as full clauses.
    """

    name: str
    subreddit: str
    things: tuple[str, ...]
    tips: tuple[str, ...]
    claims: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "games", "gaming",
        ("the new Zelda", "the ranked mode", "this patch", "the final boss", "speedrunning",
         "indie roguelikes", "the battle pass", "couch co-op", "the open world map"),
        ("lower the difficulty and learn the boss patterns", "turn off motion blur in the settings",
         "play with a controller instead of the keyboard", "do the side quests before the last act",
         "watch a short guide on the parry timing", "cap the frame rate at sixty"),
        ("single player games are better value than live service games",
         "the remake is better than the original", "difficulty settings make games more fun",
         "the story matters more than the graphics", "early access is rarely worth it",
         "the sequel fixed most of the pacing problems"),
    ),
    Topic(
        "cooking", "Cooking",
        ("cast iron pans", "homemade stock", "sourdough bread", "the carbonara recipe",
         "a rice cooker", "knife skills", "meal prep", "fresh pasta", "the sheet pan dinner"),
        ("salt the pasta water properly", "preheat the pan for five minutes",
         "let the dough rest overnight in the fridge", "use a thermometer for the chicken",
         "toast the spices before adding them", "rest the meat before slicing it"),
        ("store-bought stock is fine for most soups", "a good knife matters more than a fancy pan",
         "recipes online are way too long", "butter makes almost everything better",
         "garlic amounts in recipes are always too low", "nonstick pans are fine for eggs"),
    ),
    Topic(
        "programming", "programming",
        ("Rust", "type hints in Python", "the borrow checker", "unit tests", "code reviews",
         "microservices", "regular expressions", "the new framework", "dependency injection"),
        ("write the test before fixing the bug", "read the stack trace from the bottom up",
         "pin your dependencies", "profile before you optimise anything",
         "keep functions short and named after what they do", "commit small changes often"),
        ("most projects do not need microservices", "static typing pays off in large codebases",
         "readable code beats clever code", "tabs versus spaces does not matter with a formatter",
         "documentation is part of the code", "premature abstraction is worse than duplication"),
    ),
    Topic(
        "sports", "sports",
        ("the transfer window", "the new coach", "the playoff format", "the offside rule",
         "the video referee", "our defence", "the young striker", "the season opener"),
        ("watch the full match instead of the highlights", "stretch properly before five-a-side",
         "look at expected goals, not just the table", "give the new coach a full season",
         "buy tickets early for the derby", "follow the reserve team too"),
        ("the video referee made the game slower", "the league is more competitive than ever",
         "the captain deserves more credit", "the playoff format rewards luck",
         "the young players should get more minutes", "the club overpaid for the striker"),
    ),
    Topic(
        "music", "Music",
        ("the new album", "vinyl records", "the guitar solo", "live shows", "the bass line",
         "music theory", "the remastered edition", "the opening track", "that synth sound"),
        ("practise scales for ten minutes a day", "listen to the album front to back",
         "learn the song slowly with a metronome", "try open-back headphones",
         "record yourself and listen back", "start with three chords and a simple song"),
        ("the second album is their best work", "streaming made people discover more music",
         "live versions are often better than the studio versions", "music theory helps songwriting",
         "the remaster sounds too compressed", "the band peaked in the nineties"),
    ),
    Topic(
        "movies", "movies",
        ("the director's cut", "the new sci-fi film", "the ending", "practical effects",
         "the soundtrack", "the trilogy", "the main actor", "the film festival lineup"),
        ("watch it in a cinema with a good screen", "skip the trailers, they show too much",
         "watch the original before the remake", "turn on subtitles for the dialogue",
         "see it twice, the second viewing is better", "read the book after the film"),
        ("the ending was set up from the first scene", "practical effects age better than CGI",
         "the film is half an hour too long", "the sequel is better than the first one",
         "the soundtrack carries the whole movie", "the book is better than the film"),
    ),
    Topic(
        "science", "science",
        ("the new study", "peer review", "the sample size", "the preprint", "CRISPR",
         "the replication crisis", "the fusion experiment", "the climate model"),
        ("read the methods section before the abstract", "check whether the study was replicated",
         "look at the effect size, not just the p-value", "find the original paper behind the headline",
         "ask whether the sample was representative", "compare it with the previous meta-analysis"),
        ("the headline overstates the result", "small samples explain most surprising findings",
         "open data should be required for publication", "the replication crisis is improving science",
         "the press release misread the paper", "the result needs a larger trial"),
    ),
    Topic(
        "pets", "pets",
        ("my rescue cat", "the new puppy", "crate training", "the dog park", "wet food",
         "a second cat", "the vet bill", "the hamster cage", "clicker training"),
        ("reward the behaviour you want right away", "introduce the cats slowly over a week",
         "get pet insurance while they are young", "take the puppy out every two hours",
         "use puzzle feeders for a bored dog", "ask the vet before changing the food"),
        ("adopting is better than buying from a breeder", "cats can be trained with patience",
         "most dogs need more exercise than they get", "pet insurance pays for itself",
         "two cats are easier than one", "older dogs are underrated as pets"),
    ),
    Topic(
        "travel", "travel",
        ("the night train", "carry-on only", "the travel insurance", "the hostel",
         "the rail pass", "the layover", "the city tour", "the old town"),
        ("book the train a few weeks ahead", "pack half of what you think you need",
         "learn a few phrases of the language", "keep a copy of your passport in the cloud",
         "walk the city early in the morning", "eat where the locals eat"),
        ("slow travel beats seeing ten cities in ten days", "the rail pass is rarely worth it",
         "carry-on only is the way to travel", "guided tours are underrated",
         "the shoulder season is the best time to go", "hostels are fine at any age"),
    ),
    Topic(
        "finance", "personalfinance",
        ("index funds", "the emergency fund", "the credit card", "the mortgage",
         "the budget spreadsheet", "the retirement account", "the car loan", "the side hustle"),
        ("pay off the high interest debt first", "keep three months of expenses in savings",
         "automate the transfer on payday", "read the fee schedule before you sign",
         "check your credit report once a year", "track spending for one month first"),
        ("index funds beat most active managers", "renting is not throwing money away",
         "a budget is about priorities, not restriction", "the car is the biggest money leak",
         "paying off the mortgage early is overrated", "an emergency fund comes before investing"),
    ),
    Topic(
        "fitness", "Fitness",
        ("the beginner program", "progressive overload", "the deadlift", "rest days",
         "the running plan", "protein powder", "the home gym", "the warm-up routine"),
        ("add weight slowly and keep good form", "sleep at least seven hours",
         "film your squat from the side", "follow one program for three months",
         "eat enough protein on training days", "take a deload week every couple of months"),
        ("consistency beats the perfect program", "most people do not need supplements",
         "walking is underrated exercise", "rest days are part of training",
         "form matters more than the weight on the bar", "running and lifting can be combined"),
    ),
    Topic(
        "books", "books",
        ("the fantasy series", "audiobooks", "the book club pick", "the new translation",
         "the last chapter", "the library app", "the classics", "the short story collection"),
        ("read twenty pages before bed", "give a book fifty pages before dropping it",
         "use the library app for new releases", "keep a list of books you want to read",
         "try the audiobook for the slow parts", "read the author's earlier work first"),
        ("audiobooks count as reading", "the series should have ended after book three",
         "the classics are worth the effort", "the translation reads better than the original",
         "short stories are underrated", "the last chapter felt rushed"),
    ),
    Topic(
        "gardening", "gardening",
        ("the tomato plants", "raised beds", "the compost pile", "the herb garden",
         "the lawn", "seed starting", "the fruit trees", "the balcony garden"),
        ("water deeply and less often", "test the soil before adding fertiliser",
         "mulch the beds before summer", "start the seeds indoors six weeks early",
         "prune the trees in late winter", "plant flowers to bring in pollinators"),
        ("native plants are easier to keep alive", "lawns are a waste of water",
         "compost is the best fertiliser", "raised beds are worth the cost",
         "most people overwater their plants", "herbs are the easiest place to start"),
    ),
    Topic(
        "cars", "cars",
        ("the engine", "the electric hatchback", "the timing belt", "the winter tyres",
         "the manual gearbox", "the used sedan", "the brake pads", "the oil change"),
        ("check the tyre pressure every month", "get a pre-purchase inspection",
         "change the oil on schedule", "replace the brake pads in pairs",
         "warm the engine gently on cold mornings", "keep the service records"),
        ("electric cars are cheaper to run", "manual gearboxes are more fun to drive",
         "a reliable used car beats a new one", "winter tyres are worth it",
         "the dealer service is overpriced", "small engines are fine for city driving"),
    ),
    Topic(
        "photography", "photography",
        ("the prime lens", "the kit lens", "shooting in raw", "the mirrorless camera",
         "the tripod", "golden hour", "the editing software", "film photography"),
        ("shoot in raw and edit lightly", "learn the exposure triangle first",
         "use a prime lens for a month", "get closer to your subject",
         "shoot during golden hour", "back up your photos in two places"),
        ("the camera matters less than the photographer", "a prime lens teaches composition",
         "phone cameras are good enough for most people", "film photography is worth trying",
         "editing is part of the craft", "the kit lens is underrated"),
    ),
    Topic(
        "history", "history",
        ("the Roman roads", "the medieval trade routes", "the printing press", "the museum exhibit",
         "the ancient library", "the industrial revolution", "the old maps", "the castle ruins"),
        ("read the primary sources", "visit the local museum", "check who wrote the account and when",
         "compare two historians on the same event", "look at the maps from the period",
         "start with a good general survey"),
        ("the printing press changed everything", "popular history simplifies too much",
         "trade mattered more than battles", "local history is underrated",
         "the museum should return the artefacts", "the period was less dark than people think"),
    ),
    Topic(
        "space", "space",
        ("the space telescope", "the Mars rover", "the rocket launch", "the lunar mission",
         "the comet", "the meteor shower", "the space station", "the exoplanet survey"),
        ("use binoculars before buying a telescope", "check the launch schedule the night before",
         "find a dark sky site away from the city", "let your eyes adapt for twenty minutes",
         "follow the mission blog for updates", "download a star map app"),
        ("reusable rockets changed spaceflight", "robotic missions are better value than crewed ones",
         "the telescope images are worth the cost", "we will find life on a moon before a planet",
         "amateur astronomers still make discoveries", "the lunar base is decades away"),
    ),
    Topic(
        "diy", "DIY",
        ("the bathroom tiles", "the drywall patch", "the cordless drill", "the shelf brackets",
         "the paint job", "the leaky tap", "the deck", "the kitchen cabinets"),
        ("measure twice and cut once", "turn off the water before touching the tap",
         "use a stud finder before drilling", "prime the wall before painting",
         "watch a video before starting", "buy ten percent more tiles than you need"),
        ("a good drill is the first tool to buy", "most repairs are easier than people think",
         "cheap paint costs more in the end", "some jobs should be left to a professional",
         "renting tools beats buying them", "the prep work is most of the job"),
    ),
    Topic(
        "parenting", "Parenting",
        ("bedtime routines", "screen time", "the toddler tantrums", "the school lunches",
         "the first day of school", "the baby monitor", "pocket money", "the family holiday"),
        ("keep the same bedtime every night", "give two choices instead of one order",
         "read together for ten minutes a day", "let them help with cooking",
         "talk to the teacher early", "plan one calm afternoon a week"),
        ("routines matter more than rules", "some screen time is fine",
         "kids need more free play", "pocket money teaches saving",
         "every child sleeps differently", "family dinners are worth protecting"),
    ),
    Topic(
        "fashion", "malefashionadvice",
        ("the denim jacket", "the leather boots", "the capsule wardrobe", "the tailored suit",
         "the white sneakers", "the wool coat", "thrift shopping", "the fit of the jeans"),
        ("get the trousers hemmed", "buy fewer but better pieces", "check the stitching and fabric",
         "wear what fits your daily life", "look at the fit before the brand", "care for the leather"),
        ("fit matters more than brand", "thrift stores have the best value",
         "a capsule wardrobe saves time", "white sneakers go with everything",
         "tailoring is the best money you can spend", "trends come back every twenty years"),
    ),
    Topic(
        "tv", "television",
        ("the final season", "the pilot episode", "the spin-off", "the writers' room",
         "the cliffhanger", "the limited series", "the reboot", "the season premiere"),
        ("give it three episodes before deciding", "watch it weekly instead of bingeing",
         "skip the filler episodes", "start with the second season if the first drags",
         "watch the original version first", "avoid spoilers on social media"),
        ("the final season was rushed", "limited series are better than long runs",
         "the spin-off is better than the main show", "the reboot respects the original",
         "weekly releases are better for discussion", "the pilot was the best episode"),
    ),
    Topic(
        "hiking", "hiking",
        ("the ridge trail", "the hiking boots", "the water filter", "the summit",
         "the hut trip", "the trail map", "the rain shell", "the day pack"),
        ("start early to avoid the afternoon storms", "tell someone your route",
         "break in the boots before the trip", "carry more water than you think",
         "check the forecast the morning of the hike", "turn back if the weather changes"),
        ("trail runners are better than boots", "the summit is optional",
         "solo hiking is fine with preparation", "the ridge trail is overrated",
         "paper maps still matter", "the hut trips are the best way to start"),
    ),
    Topic(
        "coffee", "Coffee",
        ("the pour-over", "the espresso machine", "the burr grinder", "the light roast",
         "cold brew", "the French press", "the local roaster", "oat milk"),
        ("buy a good grinder before a machine", "weigh the beans and the water",
         "use beans within a month of roasting", "rinse the paper filter first",
         "dial in one variable at a time", "keep the beans in an airtight container"),
        ("the grinder matters more than the machine", "light roasts taste better",
         "cold brew is overrated", "a French press is all most people need",
         "local roasters beat supermarket beans", "oat milk steams better than dairy"),
    ),
    Topic(
        "cycling", "bicycling",
        ("the gravel bike", "the commute", "clipless pedals", "the bike lane",
         "the chain lube", "the e-bike", "the group ride", "the tubeless tyres"),
        ("lower the tyre pressure a little", "clean and lube the chain every few weeks",
         "get a proper bike fit", "carry a spare tube and a pump",
         "ride the commute route on a weekend first", "use lights even during the day"),
        ("e-bikes get more people riding", "gravel bikes are the best all-rounders",
         "bike lanes make cities better", "clipless pedals are worth the learning curve",
         "tubeless tyres are worth it", "a cheap bike is fine for commuting"),
    ),
    Topic(
        "boardgames", "boardgames",
        ("the new expansion", "the campaign game", "the deck builder", "the co-op game",
         "game night", "the rulebook", "the worker placement game", "the party game"),
        ("read the rules once before game night", "play a short game first with new players",
         "sleeve the cards you shuffle a lot", "watch a how-to-play video",
         "keep the first game open handed", "sort the components into bags"),
        ("co-op games are better for families", "the expansion fixes the base game",
         "the rulebook is badly written", "shorter games get played more",
         "deck builders are the best genre", "the campaign is worth the price"),
    ),
)

# --- Parents -----------------------------------------------------------------

_PARENT_OPENERS = (
    "", "", "", "", "Long time lurker here. ", "Serious question: ", "Throwaway account, but ",
    "Quick question. ", "Sorry if this has been asked before. ", "Update from last week: ",
)

_PARENTS = (
    "What's the best way to get into {thing}?",
    "Hot take: {claim}.",
    "Unpopular opinion: {claim}. Change my mind.",
    "I've been struggling with {thing} for weeks. Any advice?",
    "Is {thing} actually worth it, or is {thing2} better?",
    "PSA: {tip}. Saved me a ton of hassle.",
    "Can someone explain why people love {thing} so much?",
    "Just tried {thing} for the first time and I think {claim}.",
    "My friend keeps telling me that {claim}. Is that true?",
    "{Thing} or {thing2}: which one would you pick and why?",
    "Everyone in r/{sub} says to {tip}. Does it really help?",
    "I finally figured out {thing} after a year. Ask me anything.",
    "Why does nobody talk about {thing}? I think {claim}.",
    "Beginner here. Should I start with {thing} or {thing2}?",
    "Rant: I'm tired of hearing that {claim}.",
)

# --- Civil replies (level 0) ---------------------------------------------------

_CIVIL_HELPFUL = (
    "What worked for me was to {tip}. It made a big difference.",
    "My advice: {tip}. After that {thing} gets much easier.",
    "Honestly, just {tip}. Trust me on this one.",
    "Good question. It depends on your budget, but {thing} is a solid start.",
    "I had the same problem with {thing}. Try to {tip} and see if it helps.",
    "Agreed, and I'd add that {claim}.",
    "I see it a bit differently: {claim}. But I get where you're coming from.",
    "Thanks for posting this, I had no idea about {thing}.",
    "Same here! {Thing} changed how I think about {thing2}.",
    "Source? I've read that {claim}, so I'm curious.",
    "This is the kind of post I come to r/{sub} for. Thanks!",
    "Came here to say this. '{Tip}' is underrated advice.",
    "Ha, my partner said the exact same thing about {thing} last week.",
    "Respectfully, I disagree. In my experience {claim}.",
    "Great write-up. One small thing: {tip}, otherwise {thing} can go wrong.",
    "I was skeptical about {thing} too, but {claim}.",
    "Two things helped me: {tip}, and {tip2}.",
    "Not sure I agree, but I appreciate the detailed post.",
    "Congrats! {Thing} was a game changer for me as well.",
    "For anyone reading this later: {tip}.",
)

_CIVIL_LOW_EFFORT = (
    "This.", "Same.", "Following.", "Saving this for later.", "lol, true.", "Underrated comment.",
    "Came here to say this.", "Interesting, thanks.", "Wait, really?", "Fair enough.",
)

# --- Mild replies (level 1): rude, dismissive, mildly profane ------------------

# Words the judge scores as sensitive rather than clearly toxic (mostly).
_MILD_WORDS = (
    "dumb", "ridiculous", "crappy", "lame", "ignorant", "rubbish", "foolish", "whiny",
    "arrogant", "garbage",
)

_MILD_WHOLE = (
    "That's a pretty {mild} take on {thing}.",
    "Ugh, another {mild} post about {thing}. Use the search bar.",
    "Get a clue, this {mild} question about {thing} gets asked every week.",
    "What the hell, did you even try to {tip}?",
    "Damn, that's a {mild} question about {thing}.",
    "Meh, {thing} is overhyped garbage and everyone knows it.",
    "Nobody cares about your {mild} opinion on {thing}, mate.",
    "Screw this {mild} take, {thing2} is better and it's not close.",
    "What a {mild} question. Just {tip}, it's not rocket science.",
    "You clearly have no clue about {thing}, this is {mild}.",
    "Oh great, another {mild} genius who thinks {claim}.",
    "This is such a {mild} post. Did you even read the sidebar?",
)

# --- Toxic replies (level 2): insults and strong profanity ---------------------

_TOXIC_INSULTS = (
    "an absolute idiot", "a fucking moron", "a braindead clown", "a complete dumbass",
    "a pathetic loser", "a worthless piece of shit", "a total asshole", "a stupid jackass",
)

_TOXIC_WHOLE = (
    "You're a fucking idiot if you think {claim}.",
    "Shut the fuck up about {thing} already.",
    "What a braindead take. Learn about {thing} before you post, moron.",
    "This is total bullshit and you know it.",
    "Nobody gives a shit about your {thing}, loser.",
    "Go fuck yourself, {thing} is fine.",
    "Only {insult} would ask this.",
    "You're {insult}. Stop posting.",
    "Holy shit, you're dumb. Just {tip}, dumbass.",
    "Fuck {thing} and fuck this stupid post.",
    "Imagine being {insult} and still thinking {claim}.",
    "God, you're {insult}. Delete this crap.",
)

# --- Mid-sentence: a harmless opening, then the insult -------------------------

_OPENINGS = (
    "Good point about {thing}",
    "I agree that {claim}",
    "Thanks for the tip about {thing}",
    "'{Tip}' is solid advice",
    "Interesting question about {thing}",
    "You're right about {thing}",
    "I used to think {claim} too",
)

_MILD_ENDINGS = (
    ", but honestly that's a {mild} way to put it.",
    ", but this whole post is kind of {mild}.",
    ", but what the hell were you thinking with the rest?",
    ", but nobody needed another {mild} thread about it.",
    ". That said, get a clue before you post something this {mild} again.",
    ", but damn, the rest of this is {mild}.",
)

_TOXIC_ENDINGS = (
    ", but you're {insult} for thinking {claim2}.",
    ", but seriously, shut the fuck up about {thing2}.",
    ". That said, you're {insult} and this post is bullshit.",
    ", but the rest of your post is stupid as shit.",
    ", but fuck off with the rest of this crap.",
    ", but only {insult} would {tip} like that.",
)

# Synthetic upvotes: (mean, standard deviation) of the score by reply kind.
_SCORE_PARAMS = {
    "helpful": (8.0, 6.0),
    "low_effort": (1.5, 4.0),
    "mild": (0.0, 5.0),
    "toxic": (-3.0, 6.0),
}
_VIRAL_CHANCE = 0.03  # a few replies of any kind take off


class _Draws:
    """Uniform draws from a numpy Generator, sampled in bulk for speed."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 16):
        self._rng = rng
        self._chunk = chunk
        self._u: list[float] = []
        self._i = 0

    def uniform(self) -> float:
        if self._i == len(self._u):
            self._u = self._rng.random(self._chunk).tolist()
            self._i = 0
        self._i += 1
        return self._u[self._i - 1]

    def choice(self, seq):
        return seq[int(self.uniform() * len(seq))]

    def normal(self) -> float:
        # Box-Muller from two uniforms keeps every draw on one stream.
        u1, u2 = 1.0 - self.uniform(), self.uniform()
        return float(np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slots(draw: _Draws, topic: Topic) -> dict[str, str]:
    """Every slot a template may name, drawn once per pair (a fixed draw count)."""
    thing, thing2 = draw.choice(topic.things), draw.choice(topic.things)
    tip, tip2 = draw.choice(topic.tips), draw.choice(topic.tips)
    mild = draw.choice(_MILD_WORDS)
    slots = {
        "thing": thing, "thing2": thing2, "tip": tip, "tip2": tip2,
        "claim": draw.choice(topic.claims), "claim2": draw.choice(topic.claims), "mild": mild,
        "insult": draw.choice(_TOXIC_INSULTS), "sub": topic.subreddit,
    }
    slots.update({"Thing": _cap(thing), "Tip": _cap(tip)})
    return slots


def _reply(draw: _Draws, slots: dict[str, str]) -> tuple[str, str, int, bool]:
    """(comment, kind, intended level, mid_sentence) of one reply."""
    u = draw.uniform()
    mid = draw.uniform() < MID_SENTENCE_SHARE
    if u < TOXIC_SHARE:
        kind, level = "toxic", 2
        if mid:
            template = draw.choice(_OPENINGS) + draw.choice(_TOXIC_ENDINGS)
        else:
            template = draw.choice(_TOXIC_WHOLE)
    elif u < TOXIC_SHARE + MILD_SHARE:
        kind, level = "mild", 1
        if mid:
            template = draw.choice(_OPENINGS) + draw.choice(_MILD_ENDINGS)
        else:
            template = draw.choice(_MILD_WHOLE)
    else:
        mid = False
        if draw.uniform() < 0.2:
            kind, level, template = "low_effort", 0, draw.choice(_CIVIL_LOW_EFFORT)
        else:
            kind, level, template = "helpful", 0, draw.choice(_CIVIL_HELPFUL)
    return template.format(**slots), kind, level, mid


def _score(draw: _Draws, kind: str) -> int:
    mean, std = _SCORE_PARAMS[kind]
    score = mean + std * draw.normal()
    if draw.uniform() < _VIRAL_CHANCE:
        score += float(np.exp(3.0 + draw.normal()))
    return int(round(score))


def generate_corpus(n_pairs: int = DEFAULT_PAIRS, seed: int = 0) -> list[dict]:
    """``n_pairs`` distinct synthetic parent -> comment records, deterministic in ``seed``.

    Each record is ``{parent, comment, score, toxicity, topic, mid_sentence}``
    (see the module docstring); ``toxicity`` is the intended level 0/1/2.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    draw = _Draws(np.random.default_rng(seed))
    records: list[dict] = []
    seen: set[tuple[str, str]] = set()
    # Duplicates are redrawn so splits stay disjoint in content; the vocabulary
    # allows far more distinct pairs than any sensible n_pairs, so this ends.
    max_tries = 20 * n_pairs + 1000
    for _ in range(max_tries):
        if len(records) == n_pairs:
            break
        topic = draw.choice(TOPICS)
        slots = _slots(draw, topic)
        parent = draw.choice(_PARENT_OPENERS) + _cap(draw.choice(_PARENTS).format(**slots))
        # Shared slots keep the reply on the parent's subject.
        comment, kind, level, mid = _reply(draw, slots)
        score = _score(draw, kind)
        if (parent, comment) in seen:
            continue
        seen.add((parent, comment))
        records.append({
            "parent": parent,
            "comment": comment,
            "score": score,
            "toxicity": level,
            "topic": topic.name,
            "mid_sentence": mid,
        })
    if len(records) < n_pairs:
        raise ValueError(f"could only generate {len(records)} distinct pairs, asked for {n_pairs}")
    return records
