"""Gas-leak task: an LSTM autoencoder's features feeding an SVM, with pure-SVM and threshold fallbacks."""

from framework.plugin import Plugin

plugin = Plugin(
    name="gasleak",
    description="gas-leak detector: LSTM features + SVM, live service with HTTP API, MQTT and dashboard",
    modes={
        "train": "plugins.gasleak_lstm_svm.train:run",
        "evaluate": "plugins.gasleak_lstm_svm.evaluate:run",
        "demo": "plugins.gasleak_lstm_svm.service.modes:demo",
        "serve": "plugins.gasleak_lstm_svm.service.modes:serve",
    },
    conf_package="plugins.gasleak_lstm_svm.conf",
    model_artifact="directory",  # a detector bundle (manifest.json, encoder, SVM); see bundle.py
)
