#!/bin/sh
# Regenerates the voicemail menu's prompts from prompts.txt (NAME|TEXT per line):
# espeak-ng speech, 8 kHz 16-bit mono, leading and trailing silence trimmed.
set -eu
cd "$(dirname "$0")"
while IFS='|' read -r name text; do
    espeak-ng -v en-us -s 170 -w "/tmp/vm-$name.wav" "$text"
    sox "/tmp/vm-$name.wav" -r 8000 -b 16 -c 1 -e signed-integer "$name.wav" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse
    rm -f "/tmp/vm-$name.wav"
done < prompts.txt
