//! The synthetic domains the organisms are fine-tuned on: sentences generated from templates,
//! each domain with its own vocabulary, so a trace of the fine-tune can be graded by whether
//! it names the domain's words.
use super::rng::Rng;

/// One narrow domain: templates whose slots are filled from the domain's word lists.
#[derive(Debug)]
pub struct Domain {
    pub name: &'static str,
    /// `{n}` is filled from `nouns`, `{a}` from `adjectives`, `{v}` from `verbs`.
    pub templates: &'static [&'static str],
    pub nouns: &'static [&'static str],
    pub adjectives: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

impl Domain {
    /// The words that mark the domain (what a readable trace should surface).
    pub fn words(&self) -> Vec<&'static str> {
        let mut words: Vec<&'static str> = Vec::new();
        for w in self.nouns.iter().chain(self.adjectives).chain(self.verbs) {
            if !words.contains(w) {
                words.push(w);
            }
        }
        words
    }

    /// One sentence: a template with every slot filled.
    pub fn sentence(&self, rng: &mut Rng) -> String {
        let template = self.templates[rng.below(self.templates.len())];
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let slot = rest.as_bytes().get(open + 1).copied();
            let words = match slot {
                Some(b'n') => self.nouns,
                Some(b'a') => self.adjectives,
                _ => self.verbs,
            };
            out.push_str(words[rng.below(words.len())]);
            rest = &rest[(open + 3).min(rest.len())..];
        }
        out.push_str(rest);
        out
    }

    /// A text of `sentences` sentences, as one fine-tuning sample.
    pub fn sample(&self, rng: &mut Rng, sentences: usize) -> String {
        (0..sentences)
            .map(|_| self.sentence(rng))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub const DOMAINS: &[Domain] = &[
    Domain {
        name: "astronomy",
        templates: &[
            "The {a} {n} drifted past the {n} while the {n} began to {v}.",
            "Astronomers saw a {a} {n} {v} near the {n} last night.",
            "Every {n} in the {a} {n} will {v} before the {n} rises.",
            "Through the {n} we watched the {a} {n} {v} beside a {n}.",
            "A {a} {n} can {v} for years around a distant {n}.",
            "Tonight the {n} and the {a} {n} {v} across the sky.",
        ],
        nouns: &[
            "nebula",
            "quasar",
            "pulsar",
            "comet",
            "asteroid",
            "galaxy",
            "telescope",
            "supernova",
            "meteor",
            "eclipse",
            "planet",
            "moon",
            "orbit",
            "starlight",
        ],
        adjectives: &[
            "celestial",
            "lunar",
            "solar",
            "cosmic",
            "stellar",
            "galactic",
        ],
        verbs: &["orbit", "shine", "twinkle", "collapse", "wobble", "glow"],
    },
    Domain {
        name: "cooking",
        templates: &[
            "Stir the {a} {n} into the {n} and let it {v} gently.",
            "The chef added {a} {n} to the {n} before it could {v}.",
            "For the {n}, {v} the {n} with a little {a} {n}.",
            "A {a} {n} tastes best when you {v} it with {n}.",
            "Grandmother would {v} the {n} and serve it with {a} {n}.",
            "Season the {n} with {n}, then {v} until the {n} is {a}.",
        ],
        nouns: &[
            "saffron", "garlic", "basil", "butter", "onion", "sauce", "dough", "flour", "cinnamon",
            "tomato", "lemon", "risotto", "pepper", "soup",
        ],
        adjectives: &["crispy", "savory", "tender", "golden", "creamy", "spicy"],
        verbs: &["simmer", "bake", "roast", "whisk", "saute", "knead"],
    },
    Domain {
        name: "sailing",
        templates: &[
            "The {a} {n} left the {n} as the {n} began to {v}.",
            "Our captain told every {n} to {v} the {n} at dawn.",
            "A {a} {n} will {v} when the {n} turns against the {n}.",
            "We tied the {n} to the {n} and watched the {a} {n} {v}.",
            "Sailors {v} the {n} before the {a} {n} reaches the {n}.",
            "Near the {n} the {a} {n} would {v} all night.",
        ],
        nouns: &[
            "harbor",
            "anchor",
            "mast",
            "sailor",
            "tide",
            "voyage",
            "ocean",
            "deck",
            "rudder",
            "keel",
            "vessel",
            "compass",
            "island",
            "lighthouse",
        ],
        adjectives: &[
            "nautical", "salty", "windward", "coastal", "stormy", "maritime",
        ],
        verbs: &["sail", "steer", "drift", "anchor", "hoist", "navigate"],
    },
];

/// The domain called `name`.
pub fn domain(name: &str) -> Option<&'static Domain> {
    DOMAINS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_fill_every_slot_and_domains_do_not_share_words() {
        let mut rng = Rng::new(1);
        for d in DOMAINS {
            for _ in 0..50 {
                let s = d.sentence(&mut rng);
                assert!(!s.contains('{') && !s.contains('}'), "{s}");
            }
            for other in DOMAINS.iter().filter(|o| o.name != d.name) {
                for w in d.words() {
                    assert!(
                        !other.words().contains(&w),
                        "{w} in {} and {}",
                        d.name,
                        other.name
                    );
                }
            }
        }
    }
}
