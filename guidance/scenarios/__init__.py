"""The demo and simulator scenarios that ``guidance demo``, ``guidance simulate``,
``guidance control-ct`` and ``guidance replay`` run.

- :mod:`~guidance.scenarios.planning`: the demo's plan on the real CT, the drift toward a
  nerve root, the verification of the final needle on a simulated control CT;
- :mod:`~guidance.scenarios.demo`: a simulated room (fluoroscopy, ultrasound or tracked
  poses only) streamed through a :class:`~guidance.session.LiveSession` over loopback;
- :mod:`~guidance.scenarios.demo_ct`: the CT-guided demo, one control slab per step;
- :mod:`~guidance.scenarios.timeline`: the safety level's changes during a demo;
- :mod:`~guidance.scenarios.simulators`: building the simulated scanners and rooms;
- :mod:`~guidance.scenarios.simulate`: a simulated scanner or room over OpenIGTLink;
- :mod:`~guidance.scenarios.control_ct`: a simulated control CT with a needle;
- :mod:`~guidance.scenarios.replay`: a recording sent again with its timing.

A scenario says what it does through the :data:`~guidance.scenarios.errors.Say` callback
it is given (it never prints) and returns a record of what it did; its refusals are
:class:`~guidance.scenarios.errors.ScenarioError` (a
:class:`~guidance.session.SessionError`) or a loader's
:class:`~guidance.io.validate.InputError`: one line naming what. The GUI is not imported
here: the CLI passes what runs on the main thread beside a stream.
"""

from guidance.scenarios.errors import Say, ScenarioError, options_from, say_nothing

__all__ = ["Say", "ScenarioError", "options_from", "say_nothing"]
