"""Model configs in one place: the published SNAC configs and tiny ones that run fast on CPU.

Used by the tests, the benchmarks and the demo (a tiny random base), so they all build the same models.
"""

DEFAULT_BASE = "hubertsiuzdak/snac_24khz"  # the published 24 kHz model every default points at
SHIPPED_BASE = "models/speech_24khz"  # base v2, shipped here (path from the repo root); v1: models/klettres_24khz

SNAC_24KHZ = dict(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                  decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096,
                  codebook_dim=8, vq_strides=[4, 2, 1], noise=True, depthwise=True)
SNAC_32KHZ = dict(sampling_rate=32000, encoder_dim=64, encoder_rates=[2, 3, 8, 8], decoder_dim=1536,
                  decoder_rates=[8, 8, 3, 2], attn_window_size=32, codebook_size=4096,
                  codebook_dim=8, vq_strides=[8, 4, 2, 1], noise=True, depthwise=True)
SNAC_44KHZ = dict(SNAC_32KHZ, sampling_rate=44100)

# same layout rules, few parameters (TINY_24KHZ 214 k, TINY_32KHZ 540 k), the published hop and strides
TINY_24KHZ = dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32, codebook_size=64, codebook_dim=4)
TINY_32KHZ = dict(SNAC_32KHZ, encoder_dim=8, decoder_dim=128, codebook_size=64, codebook_dim=4)

# a small 24 kHz codec a 2-core CPU can train from scratch in hours (1.6 M parameters; the size
# issue 12's feasibility run used): the published hop and strides, fewer channels and codes
SMALL_24KHZ = dict(SNAC_24KHZ, encoder_dim=16, decoder_dim=256, codebook_size=1024, codebook_dim=8)

# the bases shipped in models/klettres_24khz (v1) and models/speech_24khz (v2) (1.0 M parameters;
# see their README.md): the published hop and strides, a narrow encoder, a 128-wide decoder, 3 x 256 codes
KLETTRES_24KHZ = dict(SNAC_24KHZ, encoder_dim=16, decoder_dim=128, codebook_size=256, codebook_dim=8)

# named model configs (scripts/train_codec.py --model_config NAME)
PRESETS = {"snac_24khz": SNAC_24KHZ, "snac_32khz": SNAC_32KHZ, "snac_44khz": SNAC_44KHZ,
           "small_24khz": SMALL_24KHZ, "klettres_24khz": KLETTRES_24KHZ, "tiny_24khz": TINY_24KHZ, "tiny_32khz": TINY_32KHZ}
