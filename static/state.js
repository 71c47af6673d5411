// A named state with one listener: what the connection and the players report to the page.

export class Stateful {
  constructor(initial) {
    this.state = initial;
    this.onstatechange = () => {};
  }

  /** Move to `state`; the listener hears of real changes only. */
  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onstatechange(state);
  }
}
