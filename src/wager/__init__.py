"""wager: recommendations that know how sure they are."""
