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
    # the SVMs and their bundle format (scikit-learn, skops); the service's MQTT input, webhooks and
    # GET /metrics. Also in pyproject.toml's dependencies.
    requires=("scikit-learn>=1.5", "skops>=0.10", "paho-mqtt>=2.0", "httpx>=0.27", "prometheus-client>=0.20"),
)
