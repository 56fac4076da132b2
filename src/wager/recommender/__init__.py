"""The facade and what it delegates to (see ``DESIGN.md``, "The facade, inside").

``from wager.recommender import Recommender`` is the entry point; :class:`ModelSpec`,
:class:`Catalogue` and :class:`Scorer` are the public parts policies and serving call.
"""

from wager.recommender.catalogue import Catalogue
from wager.recommender.facade import Recommender
from wager.recommender.persist import RUN_FILES
from wager.recommender.scoring import Scorer, to_tensors
from wager.recommender.spec import ModelSpec

__all__ = ["RUN_FILES", "Catalogue", "ModelSpec", "Recommender", "Scorer", "to_tensors"]
