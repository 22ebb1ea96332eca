//! The Porter (1980) English suffix stripper, used by the analyzer so that "painting",
//! "painted" and "paints" meet in one index term.
//!
//! Written out here rather than taken from a crate because the index format depends on its
//! exact output: a stemmer that changed under us would make old segments unsearchable for
//! some words. Any change to this file's behaviour therefore needs a new lexical format
//! version and a new embedder id. It follows Martin Porter's reference C implementation
//! (including his `bli`→`ble` and `logi`→`log` departures from the paper).
//!
//! Only ASCII lowercase words longer than two bytes are stemmed; everything else (numbers,
//! non-Latin scripts, short words) is returned unchanged, which is always safe.

/// Words this short or shorter are never stemmed (Porter's own rule).
const STEM_BYTES_MIN: usize = 3;

/// Stems one lowercase word. Returns the input unchanged unless it is pure ASCII
/// lowercase letters. (The analyzer calls [`stem_into`].)
#[cfg(test)]
pub fn stem(word: &str) -> String {
    stem_into(word, &mut Vec::new()).to_owned()
}

/// [`stem`] without allocating: the stem is `word` itself or lives in `scratch`, which the
/// analyzer reuses for every word of a text.
pub fn stem_into<'a>(word: &'a str, scratch: &'a mut Vec<u8>) -> &'a str {
    if word.len() < STEM_BYTES_MIN || !word.bytes().all(|c| c.is_ascii_lowercase()) {
        return word;
    }
    scratch.clear();
    scratch.extend_from_slice(word.as_bytes());
    let mut s = Stemmer {
        b: scratch,
        k: word.len() as isize - 1,
        j: 0,
    };
    s.step1ab();
    if s.k > 0 {
        s.step1c();
        s.step2();
        s.step3();
        s.step4();
        s.step5();
    }
    let end = (s.k + 1) as usize;
    let stemmed = &scratch[..end];
    if stemmed == word.as_bytes() {
        return word;
    }
    // Every byte is still ASCII: the steps only remove bytes or write ASCII suffixes.
    std::str::from_utf8(stemmed).unwrap_or_default()
}

/// The word being stemmed: `b[..=k]` is the current word, `b[..=j]` the stem that the last
/// successful `ends` left (signed because a suffix may cover the whole word, making j = -1).
struct Stemmer<'a> {
    b: &'a mut Vec<u8>,
    k: isize,
    j: isize,
}

impl Stemmer<'_> {
    fn at(&self, i: isize) -> u8 {
        self.b[i as usize]
    }

    /// True if `b[i]` is a consonant; `y` is a consonant at the start or after a vowel.
    fn cons(&self, i: isize) -> bool {
        match self.at(i) {
            b'a' | b'e' | b'i' | b'o' | b'u' => false,
            b'y' => i == 0 || !self.cons(i - 1),
            _ => true,
        }
    }

    /// The number of vowel-consonant sequences in `b[..=j]` (Porter's m).
    fn m(&self) -> usize {
        let mut n = 0;
        let mut i = 0;
        loop {
            if i > self.j {
                return n;
            }
            if !self.cons(i) {
                break;
            }
            i += 1;
        }
        i += 1;
        loop {
            loop {
                if i > self.j {
                    return n;
                }
                if self.cons(i) {
                    break;
                }
                i += 1;
            }
            i += 1;
            n += 1;
            loop {
                if i > self.j {
                    return n;
                }
                if !self.cons(i) {
                    break;
                }
                i += 1;
            }
            i += 1;
        }
    }

    fn vowel_in_stem(&self) -> bool {
        (0..=self.j).any(|i| !self.cons(i))
    }

    fn double_c(&self, j: isize) -> bool {
        j >= 1 && self.at(j) == self.at(j - 1) && self.cons(j)
    }

    /// consonant-vowel-consonant ending at i, the last not w, x or y ("hop", not "snow").
    fn cvc(&self, i: isize) -> bool {
        if i < 2 || !self.cons(i) || self.cons(i - 1) || !self.cons(i - 2) {
            return false;
        }
        !matches!(self.at(i), b'w' | b'x' | b'y')
    }

    fn ends(&mut self, s: &str) -> bool {
        let len = s.len() as isize;
        if len > self.k + 1 {
            return false;
        }
        let start = (self.k + 1 - len) as usize;
        // Most suffixes are rejected by their last letter; testing it first spares a
        // `memcmp` call for each of the ~50 suffixes steps 2-4 try on every word.
        if s.as_bytes().last() != Some(&self.at(self.k))
            || self.b[start..=(self.k as usize)] != *s.as_bytes()
        {
            return false;
        }
        self.j = self.k - len;
        true
    }

    fn set_to(&mut self, s: &str) {
        let start = (self.j + 1) as usize;
        self.b.truncate(start);
        self.b.extend_from_slice(s.as_bytes());
        self.k = self.j + s.len() as isize;
    }

    fn replace_if_m(&mut self, s: &str) {
        if self.m() > 0 {
            self.set_to(s);
        }
    }

    /// Plurals and -ed / -ing.
    fn step1ab(&mut self) {
        if self.at(self.k) == b's' {
            if self.ends("sses") {
                self.k -= 2;
            } else if self.ends("ies") {
                self.set_to("i");
            } else if self.k >= 1 && self.at(self.k - 1) != b's' {
                self.k -= 1;
            }
        }
        if self.ends("eed") {
            if self.m() > 0 {
                self.k -= 1;
            }
        } else if (self.ends("ed") || self.ends("ing")) && self.vowel_in_stem() {
            self.k = self.j;
            if self.ends("at") {
                self.set_to("ate");
            } else if self.ends("bl") {
                self.set_to("ble");
            } else if self.ends("iz") {
                self.set_to("ize");
            } else if self.double_c(self.k) {
                self.k -= 1;
                if matches!(self.at(self.k), b'l' | b's' | b'z') {
                    self.k += 1;
                }
            } else if self.m() == 1 && self.cvc(self.k) {
                self.set_to("e");
            }
        }
    }

    /// Terminal y → i when there is another vowel in the stem.
    fn step1c(&mut self) {
        if self.ends("y") && self.vowel_in_stem() {
            let k = self.k as usize;
            self.b[k] = b'i';
        }
    }

    /// Double suffixes to single ones, e.g. -ization → -ize.
    fn step2(&mut self) {
        const RULES: &[(&str, &str)] = &[
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("logi", "log"),
        ];
        self.apply_first(RULES);
    }

    /// -ic-, -full, -ness etc.
    fn step3(&mut self) {
        const RULES: &[(&str, &str)] = &[
            ("icate", "ic"),
            ("ative", ""),
            ("alize", "al"),
            ("iciti", "ic"),
            ("ical", "ic"),
            ("ful", ""),
            ("ness", ""),
        ];
        self.apply_first(RULES);
    }

    /// The first rule whose suffix matches decides; it replaces only when m > 0.
    fn apply_first(&mut self, rules: &[(&str, &str)]) {
        if self.k < 1 {
            return;
        }
        for (suffix, replacement) in rules {
            if self.ends(suffix) {
                self.replace_if_m(replacement);
                return;
            }
        }
    }

    /// Removes -ant, -ence etc. in context <c>vcvc<v>.
    fn step4(&mut self) {
        const SUFFIXES: &[&str] = &[
            "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion",
            "ou", "ism", "ate", "iti", "ous", "ive", "ize",
        ];
        if self.k < 1 {
            return;
        }
        for suffix in SUFFIXES {
            if self.ends(suffix) {
                if *suffix == "ion" && !(self.j >= 0 && matches!(self.at(self.j), b's' | b't')) {
                    // "-ion" only goes after s or t; no other suffix can end in "n".
                    return;
                }
                if self.m() > 1 {
                    self.k = self.j;
                }
                return;
            }
        }
    }

    /// Removes a final -e and reduces -ll when m > 1.
    fn step5(&mut self) {
        self.j = self.k;
        if self.at(self.k) == b'e' {
            let a = self.m();
            if a > 1 || (a == 1 && !self.cvc(self.k - 1)) {
                self.k -= 1;
            }
        }
        if self.at(self.k) == b'l' && self.double_c(self.k) && self.m() > 1 {
            self.k -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn porter_reference_examples() {
        // Pairs from Porter's paper and the reference vocabulary/output files.
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "ti"),
            ("caress", "caress"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("bled", "bled"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("troubled", "troubl"),
            ("sized", "size"),
            ("hopping", "hop"),
            ("tanned", "tan"),
            ("falling", "fall"),
            ("hissing", "hiss"),
            ("fizzed", "fizz"),
            ("failing", "fail"),
            ("filing", "file"),
            ("happy", "happi"),
            ("sky", "sky"),
            ("relational", "relat"),
            ("conditional", "condit"),
            ("generalization", "gener"),
            ("hopefulness", "hope"),
            ("electrical", "electr"),
            ("adoption", "adopt"),
            ("controlling", "control"),
            ("roll", "roll"),
            ("running", "run"),
            ("painting", "paint"),
            ("paintings", "paint"),
            ("painted", "paint"),
        ];
        for (word, expected) in cases {
            assert_eq!(stem(word), expected, "stem({word})");
        }
    }

    #[test]
    fn leaves_short_numeric_and_non_ascii_words_alone() {
        for word in ["is", "a", "2023", "3pm", "café", "naïve", "日本語", "Caps"] {
            assert_eq!(stem(word), word);
        }
    }

    #[test]
    fn never_panics_on_degenerate_suffix_only_words() {
        // Words that are nothing but a suffix drive j to -1 inside the algorithm.
        for word in [
            "ies", "sss", "eed", "ing", "ed", "ion", "ement", "yyy", "ational",
        ] {
            let out = stem(word);
            assert!(!out.is_empty() || word.is_empty(), "stem({word}) = {out:?}");
        }
    }
}
