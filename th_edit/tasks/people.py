"""List recall of people: the laundry task's shape (N names, N-1 mentioned again, recall the one
left) with other phrasings and people instead of objects, for measuring whether an edit transfers
to surface forms it was not searched on (issue 20). Not in the default set: `bench --task people`.
"""

from __future__ import annotations

from th_edit.tasks.ioi import NAMES
from th_edit.tasks.laundry import Frame, list_task
from th_edit.tasks.registry import register

# Names take no determiner (""); each frame phrases the list and the removals its own way.
FRAMES: tuple[Frame, ...] = (
    Frame("party", "I invited {first} to my birthday party. {handled} came early, so the only guest who had not "
          "arrived yet was", "", "", NAMES),
    Frame("calls", "This morning I had to phone {first}. I have already spoken to {handled}, so the one person I "
          "still have to phone is", "", "", NAMES),
    Frame("bus", "The teacher counted {first} onto the bus. She had ticked off {handled}, so the last child left "
          "to tick off was", "", "", NAMES),
)

PEOPLE = register(list_task("people", "list recall (people)", "people-list", FRAMES, tuning=("party", "calls"),
                            held_out=("bus",)))
