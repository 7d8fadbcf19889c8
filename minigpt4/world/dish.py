"""Dishes: a plate or bowl seen from above with ingredients -> recipe ground truth."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from . import render
from .backgrounds import BACKGROUNDS, background
from .textgen import NUMBER_WORDS, a, cap, count_phrase, join_list, pick
from .vocab import by_name, object_kinds

# drawn (non-emoji) ingredients: name -> (plural/mass form, colour, drawer kind)
DRAWN = {
    "pasta": ((236, 200, 90), "noodles"),
    "tomato sauce": ((200, 40, 30), "blob"),
    "rice": ((250, 250, 245), "grains"),
    "broth": (None, "fill"),
    "olives": ((40, 40, 35), "dots"),
    "green peas": ((90, 170, 60), "dots"),
    "pepperoni": ((170, 40, 35), "discs"),
    "pizza dough": ((225, 180, 110), "crust"),
    "melted cheese": ((250, 215, 100), "blob"),
    "whipped cream": ((255, 252, 245), "blob"),
    "chocolate sauce": ((95, 55, 30), "drizzle"),
}

DISHES = {
    "fruit salad": {"container": "bowl", "base": [], "extra": [], "main": "fruit",
                    "pool": ["apple", "banana", "strawberry", "blueberries", "grapes", "kiwi", "tangerine",
                             "cherries", "peach", "mango", "pineapple", "pear", "watermelon", "coconut"],
                    "pantry": ["1 tablespoon honey", "juice of half a lemon"]},
    "green salad": {"container": "bowl", "base": ["lettuce"], "extra": ["olives"], "main": "veg",
                    "pool": ["tomato", "cucumber", "carrot", "avocado", "bell pepper", "onion", "corn",
                             "cheese", "egg", "broccoli", "mushroom", "chili pepper"],
                    "pantry": ["2 tablespoons olive oil", "1 tablespoon vinegar", "salt and black pepper"]},
    "pasta": {"container": "plate", "base": ["pasta", "tomato sauce"], "extra": [], "main": "veg",
              "pool": ["tomato", "mushroom", "cheese", "garlic", "broccoli", "shrimp", "onion", "bell pepper",
                       "chili pepper", "meat", "bacon"],
              "pantry": ["2 tablespoons olive oil", "salt", "a pinch of black pepper"]},
    "pizza": {"container": "plate", "base": ["pizza dough", "tomato sauce", "melted cheese"],
              "extra": ["olives", "pepperoni"], "main": "veg",
              "pool": ["mushroom", "tomato", "bell pepper", "onion", "chili pepper", "pineapple", "corn",
                       "garlic", "bacon", "shrimp"],
              "pantry": ["1 tablespoon olive oil", "1 teaspoon dried oregano", "salt"]},
    "rice bowl": {"container": "bowl", "base": ["rice"], "extra": ["green peas"], "main": "veg",
                  "pool": ["egg", "avocado", "carrot", "broccoli", "shrimp", "cucumber", "mushroom", "corn",
                           "fried shrimp", "drumstick", "chili pepper", "onion", "fish cake"],
                  "pantry": ["2 tablespoons soy sauce", "1 teaspoon sesame oil"]},
    "vegetable soup": {"container": "bowl", "base": ["broth"], "extra": ["green peas"], "main": "veg",
                       "pool": ["carrot", "potato", "onion", "mushroom", "corn", "tomato", "broccoli", "garlic",
                                "sweet potato", "bell pepper"],
                       "pantry": ["1 liter vegetable stock", "salt and pepper", "1 bay leaf"]},
    "breakfast": {"container": "plate", "base": [], "extra": [], "main": "food",
                        "pool": ["fried egg", "bacon", "bread", "croissant", "pancakes", "avocado", "tomato",
                                 "mushroom", "cheese", "waffle", "bagel", "strawberry", "banana"],
                        "pantry": ["1 tablespoon butter", "salt and pepper"]},
    "dessert": {"container": "plate", "base": [], "extra": ["whipped cream", "chocolate sauce"],
                      "main": "food",
                      "pool": ["cake", "cookie", "donut", "cupcake", "strawberry", "cherries", "chocolate bar",
                               "ice cream", "candy", "blueberries", "pie", "lollipop"],
                      "pantry": ["1 tablespoon powdered sugar"]},
}

SOUP_COLORS = {"tomato": (205, 70, 40), "carrot": (235, 140, 50), "pumpkin": (230, 150, 40),
               "green": (120, 160, 60), "clear": (215, 185, 120)}

PREP = {"fruit": ["washed and sliced", "peeled and cut into pieces", "cut into bite-sized pieces"],
        "vegetable": ["washed and chopped", "sliced", "diced"],
        "food": ["", "sliced", ""]}


def make_truth(rng: random.Random, split: str, S: int) -> dict:
    name = pick(rng, list(DISHES))
    spec = DISHES[name]
    allowed = {k.name for k in object_kinds(split)}
    pool = [p for p in spec["pool"] if p in allowed]
    if split == "test":
        held = [p for p in spec["pool"] if by_name()[p].heldout]
        if not held:  # pick a dish that has held-out foods
            for nm, sp in DISHES.items():
                h = [p for p in sp["pool"] if by_name()[p].heldout]
                if h:
                    name, spec, held = nm, sp, h
                    pool = list(sp["pool"])
                    break
    n_kinds = rng.randint(2, 4) if name != "pizza" else rng.randint(1, 3)
    kinds = rng.sample(pool, min(n_kinds, len(pool)))
    if split == "test" and not any(by_name()[k].heldout for k in kinds):
        kinds[0] = pick(rng, held)
        kinds = list(dict.fromkeys(kinds))
    ingredients = []
    for b in spec["base"]:
        ingredients.append({"name": b, "drawn": b in DRAWN, "count": None,
                            "heldout": by_name()[b].heldout if b in by_name() else False})
    for x in spec["extra"]:
        if rng.random() < 0.45:
            ingredients.append({"name": x, "drawn": True, "count": None, "heldout": False})
    for k in kinds:
        cnt = rng.choices([1, 2, 3], weights=[3, 3, 2])[0]
        ingredients.append({"name": k, "drawn": False, "count": cnt, "heldout": by_name()[k].heldout,
                            "plural": by_name()[k].plural, "category": by_name()[k].category})
    soup = pick(rng, list(SOUP_COLORS)) if name == "vegetable soup" else None
    bg = pick(rng, ["wooden table", "kitchen tiles", "plain white", "plain gray", "plain blue", "plain green"])
    return {"kind": "dish", "dish": name, "container": spec["container"], "background": bg,
            "ingredients": ingredients, "soup_color": soup}


def _rpoint(rng, cx, cy, R):
    a = rng.uniform(0, 2 * math.pi)
    r = R * math.sqrt(rng.uniform(0.0, 1.0))
    return cx + r * math.cos(a), cy + r * math.sin(a)


def render_dish(truth: dict, S: int, rng: random.Random) -> Image.Image:
    im = background(truth["background"], S)
    d = ImageDraw.Draw(im, "RGBA")
    cx, cy = S / 2 + rng.uniform(-S * 0.02, S * 0.02), S / 2 + rng.uniform(-S * 0.02, S * 0.02)
    R = S * 0.44
    # shadow + container
    d.ellipse((cx - R + S * 0.015, cy - R + S * 0.025, cx + R + S * 0.015, cy + R + S * 0.025), fill=(0, 0, 0, 50))
    if truth["container"] == "plate":
        d.ellipse((cx - R, cy - R, cx + R, cy + R), fill=(250, 250, 250), outline=(200, 200, 205), width=max(1, S // 110))
        d.ellipse((cx - R * 0.78, cy - R * 0.78, cx + R * 0.78, cy + R * 0.78), outline=(225, 225, 230), width=max(1, S // 150))
        inner = R * 0.72
    else:
        bowl = pick(rng, [(60, 110, 180), (200, 80, 60), (240, 240, 235), (90, 150, 110)])
        d.ellipse((cx - R, cy - R, cx + R, cy + R), fill=bowl, outline=render.mix(bowl, (0, 0, 0), 0.3), width=max(1, S // 90))
        inner = R * 0.84
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=(245, 240, 230))
        inner *= 0.88
    names = {i["name"] for i in truth["ingredients"]}
    lw = max(1, S // 90)
    # drawn base layers
    if "broth" in names:
        col = SOUP_COLORS[truth["soup_color"]]
        d.ellipse((cx - inner * 1.1, cy - inner * 1.1, cx + inner * 1.1, cy + inner * 1.1), fill=col)
    if "pizza dough" in names:
        pr = inner * 1.15
        d.ellipse((cx - pr, cy - pr, cx + pr, cy + pr), fill=(215, 165, 95), outline=(170, 115, 60), width=lw * 2)
        d.ellipse((cx - pr * 0.86, cy - pr * 0.86, cx + pr * 0.86, cy + pr * 0.86), fill=(200, 50, 35))
    if "rice" in names:
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=(240, 238, 228))
        for _ in range(int(S * 1.3)):
            x, y = _rpoint(rng, cx, cy, inner * 0.97)
            ang = rng.uniform(0, math.pi)
            L = S / 90
            d.line((x, y, x + L * math.cos(ang), y + L * math.sin(ang)), fill=(255, 255, 255), width=max(1, S // 110))
    if "pasta" in names:
        pr = inner * 0.8
        d.ellipse((cx - pr, cy - pr, cx + pr, cy + pr), fill=(240, 215, 120))
        for _ in range(max(30, S // 3)):
            x, y = _rpoint(rng, cx, cy, inner * 0.65)
            pts = []
            ang = rng.uniform(0, 2 * math.pi)
            for t in range(12):
                ang += rng.uniform(-0.7, 0.7)
                x += math.cos(ang) * S / 60
                y += math.sin(ang) * S / 60
                pts.append((x, y))
            d.line(pts, fill=pick(rng, [(236, 200, 90), (225, 185, 75), (245, 215, 110)]), width=max(2, S // 70), joint="curve")
    if "tomato sauce" in names and "pizza dough" not in names:
        for _ in range(7):
            x, y = _rpoint(rng, cx, cy, inner * 0.3)
            r = inner * rng.uniform(0.2, 0.32)
            d.ellipse((x - r, y - r, x + r, y + r), fill=(200, 40, 30, 230))
    if "melted cheese" in names:
        for _ in range(9):
            x, y = _rpoint(rng, cx, cy, inner * 0.75)
            r = inner * rng.uniform(0.12, 0.22)
            d.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=(250, 215, 100, 235))
    if "lettuce" in names and any(i["name"] == "lettuce" and i["drawn"] for i in truth["ingredients"]):
        pass
    # emoji ingredients (and emoji base like lettuce) scattered
    placed = []
    items = [i for i in truth["ingredients"] if not i["drawn"]]
    for ing in items:
        k = by_name()[ing["name"]]
        n = ing["count"] or rng.randint(3, 5)  # a base emoji (lettuce) is spread around
        px = int(S * (0.2 if len(items) <= 3 else 0.17))
        if ing["count"] is None:
            px = int(S * 0.2)
        ing["_boxes"] = []
        for _ in range(n):
            best = None
            for _try in range(12):
                x, y = _rpoint(rng, cx, cy, inner * 0.95 - px * 0.35)
                dmin = min([math.hypot(x - p[0], y - p[1]) for p in placed] or [1e9])
                if best is None or dmin > best[0]:
                    best = (dmin, x, y)
                if dmin > px * 0.75:
                    break
            _, x, y = best
            placed.append((x, y))
            render.paste(im, render.glyph(k.codepoint, px), int(x - px / 2), int(y - px / 2))
            ing["_boxes"].append([int(x - px / 2), int(y - px / 2), int(x + px / 2), int(y + px / 2)])
    d = ImageDraw.Draw(im, "RGBA")
    for ing in truth["ingredients"]:
        if not ing["drawn"]:
            continue
        nm = ing["name"]
        if nm in ("olives", "green peas", "pepperoni"):
            col, _ = DRAWN[nm]
            n = rng.randint(5, 9)
            r = S * (0.022 if nm != "pepperoni" else 0.04)
            for _ in range(n):
                x, y = _rpoint(rng, cx, cy, inner * 0.85)
                d.ellipse((x - r, y - r, x + r, y + r), fill=col, outline=render.mix(col, (0, 0, 0), 0.35))
                if nm == "olives":
                    d.ellipse((x - r * 0.4, y - r * 0.4, x + r * 0.4, y + r * 0.4), fill=(120, 30, 40))
        elif nm == "whipped cream":
            x, y = _rpoint(rng, cx, cy, inner * 0.5)
            for k in range(4):
                r = S * (0.07 - k * 0.014)
                d.ellipse((x - r, y - r - k * S * 0.012, x + r, y + r - k * S * 0.012), fill=(255, 253, 248),
                          outline=(225, 220, 210))
        elif nm == "chocolate sauce":
            x, y = cx - inner * 0.8, cy - inner * 0.3
            pts = []
            for t in range(40):
                pts.append((x + t * inner * 1.6 / 40, y + math.sin(t * 0.9) * inner * 0.25 + t * inner * 0.012))
            d.line(pts, fill=(95, 55, 30), width=max(2, S // 70), joint="curve")
    return im


def _ing_phrase(ing: dict, with_count: bool = True) -> str:
    if ing["drawn"] or ing["count"] is None:
        return ing["name"]
    return count_phrase(ing["count"], ing["name"], ing["plural"])


def caption(t: dict, rng) -> str:
    names = [_ing_phrase(i) if rng.random() < 0.5 else i["name"] for i in t["ingredients"]]
    bg = pick(rng, BACKGROUNDS[t["background"]][0])
    dish = t["dish"]
    lead = pick(rng, [f"a {t['container']} of {dish}", f"{dish} on a plate" if t["container"] == "plate"
                      else f"{dish} in a bowl", f"homemade {dish}", f"a serving of {dish}"])
    s = pick(rng, [f"{lead} with {join_list(names)}", f"{lead} with {join_list(names)} on {bg}",
                   f"top view of {lead} with {join_list(names)}"])
    return " ".join(s.lower().split()[:50])


def description(t: dict, rng) -> str:
    dish, cont = t["dish"], t["container"]
    bg = pick(rng, BACKGROUNDS[t["background"]][0])
    where = "on a plate" if cont == "plate" else "in a bowl"
    s = [pick(rng, [f"This is a top-down photo of {dish} served {where}.",
                    f"The picture shows {dish} {where}, seen from above.",
                    f"A {cont} of {dish} is shown from directly above."])]
    s.append(pick(rng, [f"The {cont} sits on {bg}.", f"It is placed on {bg}.", f"Underneath the {cont} is {bg}."]))
    base = [i for i in t["ingredients"] if i["drawn"] or i["count"] is None]
    items = [i for i in t["ingredients"] if not (i["drawn"] or i["count"] is None)]
    if base:
        s.append(pick(rng, [f"The base of the dish is made of {join_list([i['name'] for i in base])}.",
                            f"You can see {join_list([i['name'] for i in base])} covering the {cont}."]))
        if t.get("soup_color"):
            s.append(f"The soup is {t['soup_color']} in color." if t["soup_color"] not in ("clear", "green")
                     else f"The soup looks {t['soup_color']}.")
    if items:
        rng.shuffle(items)
        s.append(pick(rng, [f"On top there {'is' if items[0]['count'] == 1 else 'are'} "
                            f"{join_list([_ing_phrase(i) for i in items])}.",
                            f"The ingredients I can see are {join_list([_ing_phrase(i) for i in items])}.",
                            f"It contains {join_list([_ing_phrase(i) for i in items])}."]))
    s.append(pick(rng, ["It looks fresh and colorful.", "It looks tasty and ready to eat.",
                        "The dish looks simple and homemade."]))
    return " ".join(s)


def recipe(t: dict, rng) -> str:
    dish = t["dish"]
    spec = DISHES[dish]
    lines = [pick(rng, [cap(dish), f"Simple {dish}", f"Homemade {dish}", f"Easy {dish}"]),
             "", f"Serves {rng.randint(1, 4)}.", "", "Ingredients:"]
    for ing in t["ingredients"]:
        if ing["drawn"] or ing["count"] is None:
            qty = {"pasta": "200 g pasta", "tomato sauce": "1 cup tomato sauce", "rice": "1 cup cooked rice",
                   "broth": "broth (see stock below)", "olives": "a handful of olives",
                   "green peas": "1/2 cup green peas", "pepperoni": "8 slices of pepperoni",
                   "pizza dough": "1 ball of pizza dough", "melted cheese": "1 cup grated cheese for melting",
                   "whipped cream": "whipped cream", "chocolate sauce": "2 tablespoons chocolate sauce",
                   "lettuce": "1 head of lettuce"}.get(ing["name"], ing["name"])
        else:
            k = by_name()[ing["name"]]
            n = ing["count"]
            prep = pick(rng, PREP.get(k.category, [""]))
            qty = count_phrase(n, k.name, k.plural).replace("a ", "1 ", 1).replace("an ", "1 ", 1)
            qty = qty.replace("one ", "1 ").replace("two ", "2 ").replace("three ", "3 ") + (f", {prep}" if prep else "")
        lines.append(f"- {qty}")
    for p in spec["pantry"]:
        lines.append(f"- {p}")
    lines += ["", "Steps:"]
    names = [i["name"] for i in t["ingredients"] if not i["drawn"] and i["count"] is not None]
    steps = _steps(dish, t, names, rng)
    lines += [f"{i + 1}. {st}" for i, st in enumerate(steps)]
    return "\n".join(lines)


def _steps(dish, t, names, rng) -> list[str]:
    L = join_list(names) if names else "the toppings"
    if dish == "fruit salad":
        return [f"Wash the fruit: {L}.", "Peel where needed and cut everything into bite-sized pieces.",
                "Put the fruit in a large bowl.", "Drizzle with honey and lemon juice and toss gently.",
                "Chill for 10 minutes and serve."]
    if dish == "green salad":
        return ["Wash and dry the lettuce, then tear it into pieces.", f"Chop the {L}.",
                "Whisk olive oil, vinegar, salt and pepper into a dressing.",
                "Toss everything in a bowl with the dressing" + (" and scatter the olives on top." if any(
                    i["name"] == "olives" for i in t["ingredients"]) else "."), "Serve right away."]
    if dish == "pasta":
        return ["Boil the pasta in salted water until al dente, then drain.",
                f"Meanwhile heat olive oil in a pan and cook the {L} for 5 minutes.",
                "Add the tomato sauce and simmer for 10 minutes.", "Toss the pasta with the sauce.",
                "Serve on a plate with black pepper on top."]
    if dish == "pizza":
        extras = [i["name"] for i in t["ingredients"] if i["name"] in ("olives", "pepperoni")]
        tops = names + extras
        return ["Preheat the oven to 250 C (480 F).", "Stretch the pizza dough into a round.",
                "Spread the tomato sauce and sprinkle the cheese.",
                f"Add the toppings: {join_list(tops) if tops else 'none'}.",
                "Bake for 10 to 12 minutes until golden, then slice."]
    if dish == "rice bowl":
        return ["Cook the rice and keep it warm.", f"Prepare the toppings: {L}.",
                "Put the rice in a bowl and arrange the toppings on top.",
                "Season with soy sauce and sesame oil and serve."]
    if dish == "vegetable soup":
        return [f"Chop the {L}.", "Heat a little oil in a pot and soften the vegetables for 5 minutes.",
                "Pour in the stock, add the bay leaf and bring to a boil.",
                "Simmer for 20 minutes, season with salt and pepper, and serve in a bowl."]
    if dish == "breakfast":
        return [f"Prepare the {L}.", "Cook anything that needs it in a pan with butter.",
                "Arrange everything on a plate.", "Season with salt and pepper and serve warm."]
    return [f"Arrange the {L} on a plate.",
            "Add whipped cream or chocolate sauce if you like.", "Dust with powdered sugar and serve."]


def qa(t: dict, rng, split: str) -> list[dict]:
    out = [{"question": pick(rng, ["What dish is this?", "What kind of dish is shown?", "What food is this?"]),
            "answer": t["dish"], "type": "dish", "target": t["dish"]},
           {"question": "Is the food served on a plate or in a bowl?", "answer": t["container"],
            "type": "container", "target": t["container"]}]
    present = {i["name"] for i in t["ingredients"]}
    for i in t["ingredients"]:
        out.append({"question": f"Does the dish contain {i['name']}?", "answer": "yes", "type": "ingredient",
                    "target": i["name"]})
        if i["count"] and not i["drawn"]:
            out.append({"question": f"How many {i['plural']} are on the {t['container']}?"
                        if t["container"] == "plate" else f"How many {i['plural']} are in the bowl?",
                        "answer": NUMBER_WORDS[i["count"]], "type": "count", "target": i["name"]})
    foods = [k.name for k in object_kinds(split, {"fruit", "vegetable", "food"})]
    for _ in range(2):
        n = pick(rng, foods)
        if n not in present:
            present.add(n)
            out.append({"question": f"Does the dish contain {n}?", "answer": "no", "type": "ingredient",
                        "target": n})
    rng.shuffle(out)
    return out


def alt_text(t: dict, rng, limit: int = 125) -> str:
    names = [i["name"] for i in t["ingredients"]]
    for k in range(len(names), 0, -1):
        where = "on a plate" if t["container"] == "plate" else "in a bowl"
        s = cap(f"{t['dish']} {where} with {join_list(names[:k] + (['more'] if k < len(names) else []))}.")
        if len(s) <= limit:
            return s
    return cap(f"{t['dish']}.")[:limit]


def clean_truth(t: dict) -> dict:
    out = {k: v for k, v in t.items() if k != "ingredients"}
    out["ingredients"] = [{k: v for k, v in i.items() if k != "_boxes"} | ({"bboxes": i["_boxes"]} if "_boxes" in i else {})
                          for i in t["ingredients"]]
    out["ingredient_names"] = [i["name"] for i in t["ingredients"]]
    return out


def sample(seed: int, split: str, S: int):
    from .core import Sample, rng_for
    rng = rng_for("dish", split, seed)
    sp = "train" if split == "val" else split
    t = make_truth(rng, sp, S)
    image = render_dish(t, S, rng)
    ct = clean_truth(t)
    ct.update(split=split, seed=seed, size=S)
    trng = rng_for("dish", split, seed, "text")
    return Sample(kind="dish", seed=seed, split=split, image=image, truth=ct, caption=caption(ct, trng),
                  description=description(ct, trng), qa=qa(ct, trng, sp), alt_text=alt_text(ct, trng),
                  recipe=recipe(ct, trng))
