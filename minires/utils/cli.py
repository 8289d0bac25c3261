"""What the command lines (train, export, summary, predict, weights.package) share."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with "(default: X)" where it says something: not for switches (off unless
    given), options without a default, or help text that already names its default."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)
