"""The live reserves monitor (serve --chain): unexplained movements of custody coins become alerts."""
