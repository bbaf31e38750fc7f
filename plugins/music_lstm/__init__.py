"""Music task: a character-level LSTM that writes ABC tunes conditioned on a style label."""

from framework.plugin import Plugin

plugin = Plugin(
    name="music",
    description="character-level LSTM over ABC notation, conditioned on style/region",
    modes={
        "train": "framework.runner:train",
        "generate": "plugins.music_lstm.generate:run",
        "evaluate": "plugins.music_lstm.evaluate:run",
        "serve": "plugins.music_lstm.studio:run",
    },
    conf_package="plugins.music_lstm.conf",
    plot_metrics=("bpc", "acc"),
    # ABC parsing and the MIDI/MusicXML files (music21), score images (verovio), the style
    # classifier of evaluate (scikit-learn); also in pyproject.toml's dependencies
    requires=("music21>=9.1", "verovio>=4.0", "scikit-learn>=1.5"),
)
