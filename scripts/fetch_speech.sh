#!/usr/bin/env bash
# Real recorded speech to try the pipeline on, from Debian's package mirror (apt-get download +
# dpkg-deb: no root needed, nothing installed):
#   letters   KLettres' spoken letters and syllables (package klettres-data, GPL-2+, KDE Edu):
#             ~45 min, 16 languages, mostly 44.1 kHz mono OGG          -> DEST/letters/<lang>/...
#   sentences the spoken descriptions of Tux Paint's stamps (package tuxpaint-stamps-default, GPL-2):
#             ~2.7 h of read sentences, 12 languages, 44.1 kHz; about half of it keeps real energy
#             above 12 kHz (fr, ru, da, parts of es and bg)               -> DEST/sentences/<lang>/...
# usage: scripts/fetch_speech.sh DEST [letters|sentences|both]   (default: letters, the smaller one)
# A few languages are left out of both sets: this project keeps them for its own held-out evaluation.
set -euo pipefail
dest=${1:?usage: scripts/fetch_speech.sh DEST [letters|sentences|both]}
which=${2:-letters}
case "$which" in letters|sentences|both) ;; *) echo "second argument: letters, sentences or both, not '$which'" >&2; exit 2 ;; esac
mkdir -p "$dest"; dest=$(cd "$dest" && pwd)  # absolute: the copies below run from other folders
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

unpack() {  # unpack PACKAGE: download the .deb into $tmp and extract it to $tmp/x
    if ! (cd "$tmp" && apt-get download "$1" >/dev/null 2>&1); then
        echo "apt-get download $1 failed: is this Debian/Ubuntu with a reachable mirror? (try: sudo apt-get update)" >&2
        exit 1
    fi
    dpkg-deb -x "$tmp/$1"_*.deb "$tmp/x"
}

if [[ "$which" != sentences ]]; then
    unpack klettres-data
    for lang in "$tmp"/x/usr/share/klettres/*/; do
        name=$(basename "$lang")
        case "$name" in pt_BR|ru|uk|tn) continue ;; esac  # held out (see above)
        compgen -G "$lang*/*.ogg" >/dev/null || continue
        mkdir -p "$dest/letters/$name"
        (cd "$lang" && find . -name '*.ogg' -exec cp --parents -t "$dest/letters/$name/" {} +)
    done
    n=$(find "$dest/letters" -name '*.ogg' | wc -l)
    (( n > 0 )) || { echo "no KLettres recordings found in the package: its layout changed?" >&2; exit 1; }
    echo "letters:   $n files in $dest/letters"
fi
if [[ "$which" != letters ]]; then
    unpack tuxpaint-stamps-default
    root="$tmp/x/usr/share/tuxpaint/stamps"
    while IFS= read -r -d '' f; do
        rel=${f#"$root"/}; rel=${rel%%.ogg*}                  # animals/amphibians/frog-1_desc_fr
        lang=${rel##*_desc}; lang=${lang#_}; lang=${lang:-en}
        [[ "$lang" == be ]] && continue                        # held out (see above)
        name=${rel%_desc*}; name=${name//\//-}                # animals-amphibians-frog-1
        mkdir -p "$dest/sentences/$lang"; cp "$f" "$dest/sentences/$lang/$name.ogg"
    done < <(find "$root" -name '*_desc*.ogg' -print0)
    echo "sentences: $(find "$dest/sentences" -name '*.ogg' | wc -l) files in $dest/sentences"
fi
