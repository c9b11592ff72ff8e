"""List recall of places: the laundry task's shape (N places, N-1 mentioned again, recall the one
left) with places and cities instead of objects and other phrasings of the list and of the
removals (issue 20: surface forms a search never saw). Not in the default set: `bench --task places`.
"""

from __future__ import annotations

from th_edit.tasks.laundry import Frame, list_task
from th_edit.tasks.registry import register

STOPS = ("bank", "bakery", "pharmacy", "library", "gym", "school", "park", "museum", "hospital", "station", "market",
         "cafe", "church", "airport", "zoo", "beach", "mall", "office", "garage", "hotel", "restaurant", "stadium",
         "theater", "cinema", "harbor", "farm", "castle", "dentist", "florist", "butcher", "barber", "supermarket",
         "pool", "gallery", "bookstore", "pub", "temple", "factory", "warehouse", "garden", "playground", "lake")
CITIES = ("Paris", "London", "Rome", "Berlin", "Madrid", "Tokyo", "Boston", "Chicago", "Dallas", "Denver", "Seattle",
          "Miami", "Vienna", "Prague", "Dublin", "Athens", "Cairo", "Sydney", "Toronto", "Moscow", "Lisbon", "Venice",
          "Florence", "Milan", "Munich", "Zurich", "Geneva", "Amsterdam", "Brussels", "Stockholm", "Warsaw", "Budapest",
          "Delhi", "Mumbai", "Beijing", "Shanghai", "Seoul", "Bangkok", "Singapore", "Dubai", "Istanbul", "Houston",
          "Atlanta", "Portland", "Austin", "Detroit", "Montreal", "Vancouver", "Melbourne", "Oslo", "Helsinki")

FRAMES: tuple[Frame, ...] = (
    Frame("errands", "My errands for today: {first}. I have been to {handled} already, so the one place I still "
          "have to go to is the", "the", "the", STOPS),
    Frame("trip", "Our road trip goes through {first}. We have already driven through {handled}, so the city we "
          "still have to see is", "", "", CITIES),
    Frame("tour", "The band's tour list named {first}. So far they have played in {handled}. The last city of the "
          "tour still to come is", "", "", CITIES),
)

PLACES = register(list_task("places", "list recall (places)", "places-list", FRAMES, tuning=("errands",),
                            held_out=("trip", "tour")))
