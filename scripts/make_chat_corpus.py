"""Writes crates/core/corpus/chat.jsonl, the built-in chat set (`--corpus builtin:chat`): 40
conversations (24 single exchanges, a third with a system prompt, and 16 two-exchange ones)
written for NeuroDiff and dedicated to the public domain (CC0). Deterministic (seed 0)."""
import json
import os
import random
QA = [
 ("How do I boil an egg so the yolk stays soft?", "Lower the egg into boiling water, keep it at a gentle boil for six minutes, then move it to cold water for a minute before peeling."),
 ("What is the difference between a list and a tuple in Python?", "A list can be changed after it is made; a tuple cannot. Use a tuple for a fixed record and a list for a collection that grows."),
 ("Why is the sky blue?", "Air scatters short wavelengths of sunlight more than long ones, so blue light reaches your eyes from every direction of the sky."),
 ("Can you suggest a name for a small bakery?", "A few ideas: Crumb and Copper, The Morning Loaf, Flour Street, or Second Rise."),
 ("What does HTTP status 404 mean?", "The server understood the request but found nothing at that address. The page may have moved or never existed."),
 ("How many minutes are there in a week?", "There are 7 days of 24 hours of 60 minutes, which is 10,080 minutes."),
 ("Write a haiku about rain.", "Grey roofs hum softly\nthe gutter keeps a secret\nstreetlights learn to swim"),
 ("Is it safe to charge my phone overnight?", "Modern phones stop charging when the battery is full, so it is generally fine. Keep the phone off soft surfaces so it can stay cool."),
 ("Explain recursion in one sentence.", "Recursion is solving a problem by solving a smaller copy of the same problem until the copy is small enough to answer directly."),
 ("What should I pack for a two-day hike?", "Water and a way to filter more, food, layers for warmth and rain, a map, a headlamp, a first-aid kit and a sleeping setup suited to the nights."),
 ("Translate 'good morning' into Spanish and French.", "Spanish: buenos días. French: bonjour."),
 ("How do I reverse a string in JavaScript?", "Split it into characters, reverse the array and join it again: str.split('').reverse().join('')."),
 ("Why do cats purr?", "Cats purr when they are content, but also when they are stressed or hurt; the vibration may help them calm down and heal."),
 ("What is a prime number?", "A whole number greater than one whose only divisors are one and itself, such as 2, 3, 5, 7 and 11."),
 ("Give me a tip for falling asleep faster.", "Keep the same wake-up time every day, and put screens away half an hour before bed."),
 ("How does a refrigerator keep food cold?", "A refrigerant absorbs heat inside as it evaporates and releases it outside as a compressor squeezes it back into a liquid."),
 ("What is the capital of Australia?", "Canberra, not Sydney, although Sydney is the largest city."),
 ("Summarise the plot of Romeo and Juliet in two sentences.", "Two young people from feuding families in Verona fall in love and marry in secret. A chain of misunderstandings ends with both taking their own lives, which finally reconciles their families."),
 ("How can I make my résumé stand out?", "Lead with results rather than duties, use numbers where you can, and tailor the first third of the page to the job you are applying for."),
 ("What is 15% of 240?", "Ten percent is 24 and five percent is 12, so 15% of 240 is 36."),
 ("Recommend a beginner houseplant.", "A pothos: it tolerates low light, forgives missed waterings and shows you when it is thirsty by drooping."),
 ("What does 'git rebase' do?", "It replays your commits on top of another branch, giving a straight history instead of a merge commit."),
 ("Why do we have leap years?", "A year is about 365.24 days long, so an extra day every four years keeps the calendar in step with the seasons."),
 ("How do I politely decline an invitation?", "Thank them warmly, say you cannot make it without a long excuse, and suggest another time if you would like to see them."),
]
FOLLOW = [
 ("Can you say that more simply?", "Sure: {short}"),
 ("Thanks! One more question: is there a common mistake to avoid?", "The most common one is rushing it; take the extra minute and check the result."),
]
SYSTEMS = ["You are a concise assistant.", "You are a friendly helper who answers in plain language.", None]
rng = random.Random(0)
out = []
for i, (q, a) in enumerate(QA):
    sys = SYSTEMS[i % 3]
    msgs = ([{"role": "system", "content": sys}] if sys else []) + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    out.append({"messages": msgs})
for i in range(16):
    (q1, a1), (q2, a2) = rng.sample(QA, 2)
    msgs = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}]
    if i % 2:
        f, r = FOLLOW[0]
        msgs += [{"role": "user", "content": f}, {"role": "assistant", "content": r.format(short=a1.split('. ')[0].rstrip('.') + '.')}]
    else:
        msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
    out.append({"messages": msgs})
with open(os.path.join(os.path.dirname(__file__), '..', 'crates', 'core', 'corpus', 'chat.jsonl'), 'w') as f:
    for c in out:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(len(out))
